# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. The data: IU-Xray reports, labels and splits
#
# ## Overview
#
# **The question.** Before asking how well BiomedCLIP classifies IU-Xray, we need to know
# what the labels are, where they come from, how trustworthy they are, and how rare each
# finding is. Every later chapter inherits this chapter's label table and split.
#
# IU-Xray (the Indiana University chest X-ray collection, distributed through Open-I
# {cite}`demner2016preparing`) holds radiology reports with a FINDINGS and an IMPRESSION
# section, human-coded MeSH terms, and frontal and lateral images. It has no CheXpert
# labels; we derive the 14 CheXpert observations {cite}`irvin2019chexpert` from the report
# text with a rule-based labeler, and check them against a second, independent scheme built
# from the MeSH terms.
#
# You will learn how to turn free-text reports into multi-label targets (mentions, negation,
# uncertainty), how to judge such labels against an independent coding, how imbalanced and
# entangled the 14 findings are, and how to split multi-label data without leaking a report
# across splits.
#
# ## Prerequisites
#
# None beyond basic Python and pandas. The terms used throughout the book are in the
# {doc}`../glossary`.

# %% tags=["parameters"]
profile = "demo"  # demo or full: which inputs; this chapter uses the real reports in both
uncertain_policy = "positive"  # uncertain mentions become positive (U-Ones) or negative (U-Zeros)
split_seed = 0  # seed of the report-level stratified split
split_fractions = [0.7, 0.1, 0.2]  # train, val, test fractions of reports
views = ["frontal"]  # frontal: one selected frontal per report; frontal-any, lateral, all (every image), or PA/AP/FRONTAL/LATERAL
n_examples = 4  # example reports shown with their extracted labels
reports_path = ""  # report archive; empty uses the copy shipped with torchxrayvision

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML, Markdown, display
from myst_nb import glue

from helpers import labels as L
from helpers.config import get_profile
from helpers import label_rules
from helpers.data import EVIDENCE_RANK, load_study_data, split_table, view_audit
from helpers.stamp import make_stamp, show_stamp

get_profile(profile)
data = load_study_data(uncertain_policy, split_seed, split_fractions, views, reports_path or None)
table, split = data.table, data.split
images, reports = table.images, table.reports
LABELS = list(L.CHEXPERT_LABELS)
show_stamp(make_stamp(profile, "none (data chapter)", data.split_hash,
                      label_table_hash=table.hash, uncertain_policy=uncertain_policy))

# %% [markdown]
# ## Dataset card
#
# One row per report and one per image. Nothing is dropped silently: the loader counts
# malformed XML, reports without text, reports without images, and images that the DICOM
# metadata knows but no report references.

# %%
n_reports, n_images = len(reports), len(images)
glue("n_reports", n_reports, display=False)
glue("n_images", n_images, display=False)
glue("n_no_text", len(table.load_report.reports_without_text), display=False)
glue("n_no_image", len(table.load_report.reports_without_images), display=False)
table.load_report.summary().style.hide(axis="index")

# %% [markdown]
# The archive holds {glue:text}`n_reports` reports referencing {glue:text}`n_images` images.
# {glue:text}`n_no_text` reports have neither FINDINGS nor IMPRESSION text: the labeler sees an
# empty report, so all their observations are "not mentioned" and CheXpert's rule makes them
# *No Finding*. {glue:text}`n_no_image` reports have no image at all; they keep their labels in
# the report table (they count in the label statistics below) but cannot enter the image split.
#
# ### Views: one frontal image per report
#
# The DICOM `View Position` tag is missing for about a third of the images and is known to be
# noisy. We infer each image's view from four kinds of evidence, strongest first: the
# pixel-derived frontal/lateral call that ships with torchxrayvision
# {cite}`cohen2022torchxrayvision` (a t-SNE clustering of the images themselves), the DICOM
# `View Position` tag, the DICOM patient orientation, and finally the other image of a
# two-image report (a frontal + lateral exam). Images by inferred view (rows) and the evidence
# that decided it (columns):

# %%
audit = view_audit(images)
glue("n_unknown_view", int((images.view == "UNKNOWN").sum()), display=False)
audit["by_source"]

# %% [markdown]
# {glue:text}`n_unknown_view` images stay `UNKNOWN`. The DICOM tags are copied across the
# images of an exam more often than not, so a report can hold a pixel-confirmed frontal *and*
# a sibling whose tag also says "PA" but whose pixels the t-SNE call saw as lateral or did
# not see at all. IU-Xray exams are one frontal and one lateral image, so the study keeps
# **one frontal image per report**, chosen by a stated rule:
#
# 1. **Stronger evidence wins.** Among a report's frontal candidates, pixels beat DICOM tags,
#    which beat orientation, which beats report pairing; a DICOM-only "PA" beside a
#    pixel-confirmed frontal is dropped.
# 2. **Ties go to the first image id** (natural order, so `-4004` before `-12012`): the first
#    exposure of the exam. The data back this rule: in the reports where the pixels identify
#    the frontal image, it is the first id in {glue:text}`first_id_agree` of them.
# 3. **Pixels may keep more.** Several candidates all confirmed by pixels would all be kept
#    (the evidence then says the exam had two frontals); this happens in
#    {glue:text}`n_several_px` reports.
#
# How many reports each rule decided, and how many frontal candidates it kept and dropped:

# %%
import re

def _natural(s):
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", s)]

px_reports = images[images.view_source.eq("pixels") & images.view.ne("LATERAL")].report_id
multi = images[images.report_id.isin(px_reports)].groupby("report_id").filter(lambda g: len(g) > 1)
first_is_px = multi.groupby("report_id").apply(
    lambda g: g.sort_values("image_id", key=lambda c: c.map(_natural)).iloc[0].view_source == "pixels")
glue("first_id_agree", f"{first_is_px.mean():.1%} ({first_is_px.sum()} of {len(first_is_px)})",
     display=False)
glue("n_several_px", int(audit["rules"].loc["several pixel-confirmed", "reports"]), display=False)
audit["rules"]

# %% [markdown]
# The audit before and after the selection, over the reports that have at least one image:

# %%
per = audit["per_report"]
glue("n_frontal_before", int(per.loc["frontal images", "before selection"]), display=False)
glue("n_frontal_after", int(per.loc["frontal images", "after selection"]), display=False)
glue("n_multi_before", int(per.loc["reports with 2+ frontal images", "before selection"]), display=False)
glue("n_zero_frontal", int(per.loc["reports with 0 frontal images", "after selection"]), display=False)
per

# %% [markdown]
# Before the selection, {glue:text}`n_multi_before` reports had two or more images tagged
# frontal; {glue:text}`n_frontal_before` frontal-tagged images become
# {glue:text}`n_frontal_after` selected frontals, one per report. {glue:text}`n_zero_frontal`
# reports have no frontal candidate at all (only lateral or unknown images) and take no part in
# the frontal study.
#
# **How this compares with published IU-Xray frontal counts.** Other distributions of the
# collection label views differently, so the counts below are a sanity check, not a target:
#
# - The Kaggle distribution {cite}`raddar_iuxray_kaggle` ships a projection table
#   (`indiana_projections.csv`) that labels every image *Frontal* or *Lateral*. We could not
#   open the file ourselves; independent public analyses of it report the counts in the table.
# - R2Gen {cite}`chen2020r2gen`, the most reused report-generation split, keeps only reports
#   with exactly two images (a frontal and a lateral): its released annotation file holds the
#   study counts below, so one frontal per study.
# - The torchxrayvision pixel call {cite}`cohen2022torchxrayvision` (our strongest evidence)
#   names the frontal image of the reports it covers, at most one per report.

# %%
published = pd.DataFrame([
    # Kaggle indiana_projections.csv, as counted by independent public analyses of the file
    {"source": "Kaggle projection table", "reports": 3851, "frontal images": 3818,
     "reports without a frontal": 162, "one frontal per report": "no"},
    # R2Gen annotation.json: 2,069 / 296 / 590 studies, two images each (frontal + lateral)
    {"source": "R2Gen split (two-image studies)", "reports": 2069 + 296 + 590,
     "frontal images": 2069 + 296 + 590, "reports without a frontal": 0,
     "one frontal per report": "yes"},
])
tsne = images.view_source.eq("pixels") & images.view.ne("LATERAL")
ours = pd.DataFrame([
    {"source": "torchxrayvision pixel call (shipped file)", "reports": int(images.report_id[images.view_source.eq("pixels")].nunique()),
     "frontal images": int(tsne.sum()), "reports without a frontal": np.nan,
     "one frontal per report": "yes"},
    {"source": "this study, before selection", "reports": images.report_id.nunique(),
     "frontal images": int(per.loc["frontal images", "before selection"]),
     "reports without a frontal": int(per.loc["reports with 0 frontal images", "before selection"]),
     "one frontal per report": "no"},
    {"source": "this study, after selection", "reports": images.report_id.nunique(),
     "frontal images": int(per.loc["frontal images", "after selection"]),
     "reports without a frontal": int(per.loc["reports with 0 frontal images", "after selection"]),
     "one frontal per report": "yes"},
])
counts = pd.concat([published, ours], ignore_index=True).set_index("source")
counts["reports without a frontal"] = counts["reports without a frontal"].map(
    lambda v: "n/a" if pd.isna(v) else int(v))
kaggle = counts.loc["Kaggle projection table"]
glue("kaggle_frontal", int(kaggle["frontal images"]), display=False)
glue("kaggle_diff", int(kaggle["frontal images"] - counts.loc["this study, after selection", "frontal images"]),
     display=False)
glue("kaggle_reports", int(kaggle["reports"]), display=False)
glue("kaggle_zero", int(kaggle["reports without a frontal"]), display=False)
glue("n_reports_with_images", images.report_id.nunique(), display=False)
counts

# %% [markdown]
# The Kaggle table covers {glue:text}`kaggle_reports` reports with images (ours:
# {glue:text}`n_reports_with_images`) and counts {glue:text}`kaggle_frontal` frontal images,
# {glue:text}`kaggle_diff` more than our selection: it counts every frontal image, a report's
# second frontal included, where we keep one per report. Its number of reports without a
# frontal ({glue:text}`kaggle_zero`) is close to ours. Before the selection our frontal count
# was far above every published count: the extra images were most likely laterals with a
# copied "PA" tag, since IU-Xray exams are one frontal and one lateral image.
# The `demo` profile renders one phantom per selected frontal, so it follows the same rule.
#
# ## The labeler
#
# The labeler follows the rules of the CheXpert labeler {cite}`irvin2019chexpert`, restated
# for a parser-free spaCy pipeline (the rules are data, in `helpers/label_rules.py`):
#
# 1. **Mentions.** An entity ruler finds mentions of each observation in FINDINGS +
#    IMPRESSION from CheXpert's phrase lists, matched as whole words with their inflections
#    ("scarring" is a Lung Opacity, "pleural scarring" and "fibrosis" are Pleural Other,
#    "pericardial effusion" and "calcified nodule" are *not* effusion or lesion). It also
#    finds CheXpert's *other findings*: emphysema, granulomas, degenerative changes, hernias,
#    a blunted costophrenic angle and some fifty more that are none of the 14 observations.
# 2. **Pre-negation uncertainty.** "cannot exclude", "is not excluded", "cannot rule out" and
#    "no new" make a mention uncertain even though they contain a negation.
# 3. **Negation.** NegEx {cite}`chapman2001negex` (the `negspacy` implementation, clinical
#    termset adapted with CheXpert's absence cues) marks mentions in the scope of "no",
#    "without", "free of", "is not seen", "has resolved", "history of", ... as negative. A hedge
#    ends a negation's scope: in "no pneumothorax, possible effusion" only the pneumothorax is
#    negated.
# 4. **Post-negation uncertainty.** Mentions no negation reached are uncertain in the scope of
#    CheXpert's hedges ("may", "possible", "suspicious for", "concerning for", "versus",
#    "secondary to", "poorly evaluated"), when coordinated by "or" ("atelectasis or
#    scarring": both uncertain), or when the phrase itself is a hedge in CheXpert's rules
#    ("vascular congestion", "indistinctness"). Words that are **not** uncertainty cues, as in
#    CheXpert: "likely", "probably", "suggestive of", "consistent with". "Heart failure" or
#    "CHF" also makes Cardiomegaly uncertain (CheXpert's aggregation rule).
# 5. **Report level.** Per observation: any positive mention gives 1; otherwise any uncertain
#    mention gives $-1$; otherwise any negative mention gives 0; otherwise the observation is
#    not mentioned. *No Finding* is 1 only when nothing other than Support Devices (neither one
#    of the 12 pathologies nor an other finding) is positive or uncertain: a pacemaker may
#    co-occur with No Finding, a calcified granuloma may not.
# 6. **Uncertainty policy.** The study needs binary targets. With `uncertain_policy="positive"`
#    (U-Ones, the default) an uncertain observation counts as present; with `"negative"`
#    (U-Zeros) as absent. Not-mentioned is always absent.
#
# How many mentions in the whole archive each rule decided:

# %%
labeler = L.ReportLabeler()
report_text = (reports.findings.fillna("") + " " + reports.impression.fillna("")).str.strip()
all_mentions = [m for doc in labeler.nlp.pipe(report_text) for m in labeler._mentions(doc)]
by_rule = pd.crosstab(pd.Series([m.rule for m in all_mentions], name="rule"),
                      pd.Series(["other finding" if m.label == L.OTHER_FINDING else "observation"
                                 for m in all_mentions], name="mention of"), margins=True,
                      margins_name="total")
by_rule = by_rule.reindex([*L.RULE_CLASSES, "heart failure", "total"]).fillna(0).astype(int)
glue("n_or_coordinated", int(by_rule.loc["or-coordination", "total"]), display=False)
by_rule

# %% [markdown]
# Most mentions are negated ("no pleural effusion"); {glue:text}`n_or_coordinated` are
# uncertain only because an "or" coordinates them (CheXpert's `conj:or` rule). The *other findings* are nearly all positive: they are what
# radiologists name in otherwise normal reports, and they are why No Finding is rarer here than
# "none of the 12 observations".
#
# ### Where our rules still differ from CheXpert's
#
# The CheXpert labeler classifies mentions on a dependency parse; ours uses NegEx scopes and
# a few deliberate changes. Each difference and the reason we keep it:

# %%
diffs = pd.DataFrame(label_rules.DIFFERENCES).set_index("rule")
diffs.style.set_properties(**{"text-align": "left", "white-space": "normal"})

# %% [markdown]
# A few reports, with each mention highlighted (green: positive, grey struck-through:
# negated, orange: uncertain; hover for the label and the rule that decided it):

# %%
rng = np.random.default_rng(split_seed)
with_text = reports[(reports.findings.str.len() + reports.impression.str.len()) > 0]
abnormal = with_text[with_text["No Finding"] == 0]
picks = pd.concat([abnormal.sample(max(n_examples - 1, 0), random_state=split_seed),
                   with_text[with_text["No Finding"] == 1].sample(min(1, n_examples), random_state=split_seed)])
blocks = []
for _, r in picks.iterrows():
    text = f"FINDINGS: {r.findings} IMPRESSION: {r.impression}"
    pos = [c for c in LABELS if r[c] == 1]
    blocks.append(f"<p><b>{r.report_id}</b> &rarr; {', '.join(pos) or 'none'}<br>"
                  f"{L.mentions_html(text, labeler.mentions(text))}</p>")
display(HTML("".join(blocks)))

# %% [markdown]
# ## Label prevalence: a heavily imbalanced problem
#
# Prevalence of each observation among reports, under both label schemes. The scale is
# logarithmic: *No Finding* dominates, and several observations are present in about one
# report in a hundred.

# %%
text_bin = reports[LABELS]
mesh_bin = reports[[f"mesh:{c}" for c in LABELS]].set_axis(LABELS, axis=1)
prev = pd.DataFrame({"text labeler": text_bin.mean(), "MeSH": mesh_bin.mean()})
glue("prev_no_finding", f"{prev.loc['No Finding', 'text labeler']:.0%}", display=False)
rarest = prev["text labeler"].idxmin()
glue("rarest_label", rarest, display=False)
glue("rarest_prev", f"{prev.loc[rarest, 'text labeler']:.1%}", display=False)
fig, ax = plt.subplots(figsize=(8, 4.5))
order = prev.sort_values("text labeler").index
y = np.arange(len(order))
ax.barh(y - 0.2, prev.loc[order, "text labeler"], 0.4, label="text labeler", color="#3366aa")
ax.barh(y + 0.2, prev.loc[order, "MeSH"], 0.4, label="MeSH terms", color="#dd8844")
ax.set_yticks(y, order)
ax.set_xscale("log")
ax.set_xlabel("fraction of reports (log scale)")
ax.legend(loc="lower right")
ax.set_title(f"Label prevalence over {n_reports} IU-Xray reports")
fig.tight_layout()
plt.show()

# %% [markdown]
# {glue:text}`prev_no_finding` of reports are *No Finding* under the text labeler; the rarest
# observation, {glue:text}`rarest_label`, is present in {glue:text}`rarest_prev` of them. A
# classifier that predicts "No Finding" for everything gets most exact matches right, which is
# why the study reports ranking metrics (LRAP, coverage error) and per-label scores beside F1
# and exact match.
#
# ## Which findings occur together
#
# The co-occurrence matrix counts reports with both observations; the diagonal is each
# observation's count. Chapter 3 asks whether a linear probe exploits these correlations
# (Cardiomegaly with Edema and Pleural Effusion, Lung Opacity with Atelectasis and Pneumonia).

# %%
Y = text_bin.to_numpy(int)
co = Y.T @ Y
fig, ax = plt.subplots(figsize=(7.5, 6.5))
im = ax.imshow(np.log10(co + 1), cmap="viridis")
ax.set_xticks(range(len(LABELS)), LABELS, rotation=70, ha="right", fontsize=8)
ax.set_yticks(range(len(LABELS)), LABELS, fontsize=8)
for i in range(len(LABELS)):
    for j in range(len(LABELS)):
        ax.text(j, i, co[i, j], ha="center", va="center", fontsize=6,
                color="white" if co[i, j] < co.max() / 3 else "black")
fig.colorbar(im, ax=ax, label="log10(reports + 1)")
ax.set_title("Label co-occurrence (reports)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Report length
#
# BiomedCLIP's text tower reads at most 256 tokens; IU-Xray reports are short. Lengths are in
# words of FINDINGS + IMPRESSION.

# %%
n_words = (reports.findings.fillna("") + " " + reports.impression.fillna("")).str.split().str.len()
glue("median_words", int(n_words.median()), display=False)
glue("p99_words", int(n_words.quantile(0.99)), display=False)
fig, ax = plt.subplots(figsize=(7, 3.2))
ax.hist(n_words, bins=60, color="#3366aa")
ax.set_xlabel("words in FINDINGS + IMPRESSION")
ax.set_ylabel("reports")
fig.tight_layout()
plt.show()

# %% [markdown]
# The median report has {glue:text}`median_words` words and 99% have at most
# {glue:text}`p99_words`, far inside the 256-token context.
#
# ## How trustworthy are the labels? Text labeler against MeSH
#
# The MeSH terms were coded by people, independently of our rules. We map them to the same 14
# observations (for example `Cardiomegaly`, `Cardiac Shadow/enlarged` → Cardiomegaly;
# `Catheters, Indwelling`, `Implanted Medical Device` → Support Devices), with the labeler's
# definitions: `Cicatrix/lung` (scarring) is a Lung Opacity, a blunted costophrenic angle is
# not an effusion, and any MeSH term that names one of CheXpert's other findings
# (`Emphysema`, `Calcified Granuloma`, `Thoracic Vertebrae/degenerative`, `Calcinosis`, ...)
# rules out No Finding. Then we compare, per report: prevalence in each scheme, Cohen's kappa $\kappa = (p_o - p_e)/(1 - p_e)$ (observed
# agreement $p_o$ corrected for the agreement $p_e$ expected by chance from the two
# prevalences), and F1 of the text labels taking MeSH as the reference.

# %%
agr = L.agreement(text_bin, mesh_bin)
glue("median_kappa", f"{agr.kappa.median():.2f}", display=False)
worst = agr.kappa.idxmin()
glue("worst_kappa_label", worst, display=False)
glue("worst_kappa", f"{agr.loc[worst, 'kappa']:.2f}", display=False)
agr.style.format("{:.3f}").background_gradient(subset=["kappa"], cmap="RdYlGn", vmin=0, vmax=1)

# %% [markdown]
# The median kappa over the 14 observations is {glue:text}`median_kappa`; the weakest is
# {glue:text}`worst_kappa_label` ($\kappa$ = {glue:text}`worst_kappa`). Disagreement has two
# sources: labeler errors, and differences of what each scheme records (MeSH codes what the
# radiologist named; a hedged "possible pneumonia" is an uncertain, hence positive, text label
# under U-Ones but rarely a MeSH code). Where kappa is low, per-label results in later
# chapters deserve caution.
#
# The uncertainty policy matters most for hedged observations. Prevalence under both
# policies:

# %%
three = reports[[f"text:{c}" for c in LABELS]].set_axis(LABELS, axis=1)
pol = pd.DataFrame({p: L.binarize(three, p).mean() for p in L.UNCERTAIN_POLICIES})
pol["uncertain mentions"] = (three == L.UNCERTAIN).sum()
pol.style.format({"positive": "{:.3f}", "negative": "{:.3f}"})

# %% [markdown]
# ## What the `demo` profile's images are
#
# The `demo` profile cannot ship IU-Xray's images, so every frontal image id gets a synthetic
# radiograph (a *phantom*) whose findings are that image's real labels. The anatomy is grounded
# in real annotations that ship with torchxrayvision: lung fields come from hundreds of
# radiologist-drawn lung masks, and each finding's position and size are sampled from
# radiologists' boxes for that class (NIH ChestX-ray14; VinDr-CXR for consolidation, pleural
# thickening and mediastinal widening). Each finding is drawn together with its exact pixel mask
# (red outline below), which chapter 6 uses as ground truth for Grad-CAM.
#
# Two acquisition *styles* give the distribution shift the study is about: `source` (crisp,
# high contrast: the style the demo model is pretrained on) and `target` (brighter, lower
# contrast, grainier, blurrier, tilted and shifted: the style of the demo's IU-Xray images).
# Phantoms are caricatures: every finding is visible by construction, anatomy is simplified, and
# there is no patient variation beyond what the sampled masks and boxes give. They let the
# pipeline run end to end and make saliency checkable pixel by pixel; they say nothing about
# how BiomedCLIP sees real radiographs.

# %%
from helpers import phantoms
from helpers.plots import show_with_mask

findings = [c for c in LABELS if c != "No Finding"] + ["No Finding"]
fig, axes = plt.subplots(4, 7, figsize=(14, 8.6))
for k, label in enumerate(findings):
    y = [int(c == label) for c in LABELS]
    for s, style in enumerate(phantoms.STYLES):
        img, bits = phantoms.render(y, phantoms.seed_for(f"gallery-{k}", style), style)
        ax = axes[2 * s + k // 7, k % 7]
        show_with_mask(ax, img, phantoms.mask_of(bits, label) if label != "No Finding" else None,
                       f"{label}\n({style})")
fig.suptitle("One phantom per finding in each style; red: the finding's exact mask", y=1.0)
fig.tight_layout()
plt.show()

# %% [markdown]
# The styles' parameters (tone curve, noise, blur and positioning):

# %%
phantoms.style_table()

# %% [markdown]
# ## The split
#
# Reports, not images, are split into train / validation / test, so that no report's images
# appear on both sides. The split is stratified on the 14 labels with iterative stratification
# {cite}`sechidis2011stratification`, which keeps rare labels' proportions similar across splits.
# Only images of the chosen views (parameter `views`) take part. The split is saved with its
# content hash, which every later page shows in its stamp.

# %%
st = split_table(split)
glue("split_hash", data.split_hash, display=False)
missing = [(c, s) for c in LABELS for s in st.columns if st.loc[c, s] == 0]
glue("split_missing", ", ".join(f"{c} in {s}" for c, s in missing) or "none", display=False)
st

# %% [markdown]
# Split hash: {glue:text}`split_hash`. Label/split pairs with no positive example:
# {glue:text}`split_missing`. Thresholds, prompts and any other choice in later chapters are
# tuned on **val** and applied once to **test**.
#
# ## Summary
#
# - The study's labels are derived from real report text by transparent rules and checked
#   against human MeSH coding; the agreement table says where to trust them.
# - The problem is multi-label and heavily imbalanced, with strong co-occurrences.
# - The split is at report level, stratified, seeded and hashed.
#
# ## What's next
#
# {doc}`02_zero_shot` asks how well a vision-language model recognises these findings without any
# training (zero-shot).
#
# ## Exercises
#
# :::{exercise}
# :label: ex-data-uncertain
#
# Re-run the chapter with `-p uncertain_policy negative`. Which labels lose the most positives,
# and how does that change the agreement with MeSH for them?
# :::
#
# :::{solution} ex-data-uncertain
# :class: dropdown
#
# Labels that radiologists often hedge ("possible pneumonia", "cannot exclude atelectasis") lose
# the most; the prevalence table and the agreement table show by how much. If MeSH coders also
# skip hedged findings, agreement for those labels rises under the negative policy.
# :::
#
# :::{exercise}
# :label: ex-data-split
#
# Why is the split made by *report* rather than by image? What would go wrong with an image-level
# split?
# :::
#
# :::{solution} ex-data-split
# :class: dropdown
#
# A report has several images of the same patient and the same labels. Split by image, a test
# image's twin (the same chest, the other view or a repeat) could sit in training, and every test
# metric would be optimistic.
# :::
#
# :::{exercise}
# :label: ex-data-nofinding
#
# CheXpert's rule makes *No Finding* positive only when no other finding (Support Devices aside)
# is positive. What does this do to No Finding's co-occurrence with the other labels?
# :::
#
# :::{solution} ex-data-nofinding
# :class: dropdown
#
# No Finding never co-occurs with the other 12 findings by construction (only with Support
# Devices), so it is strongly anti-correlated with them: a model can score it well just by
# detecting "anything abnormal". Because CheXpert's other findings (granulomas, degenerative
# changes, emphysema) also rule it out, No Finding is rarer than "none of the 12 observations",
# and some reports carry no positive label at all.
# :::
