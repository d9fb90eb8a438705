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
# what the labels are, where they come from, how trustworthy they are, how rare each
# finding is, and, for the `demo` profile, what its synthetic images can and cannot
# decide. Every later chapter inherits this chapter's label table and split.
#
# IU-Xray (the Indiana University chest X-ray collection, distributed through Open-I
# {cite}`demner2016preparing`) holds radiology reports with a FINDINGS and an IMPRESSION
# section, human-coded MeSH terms, and frontal and lateral images. It has no CheXpert
# labels; we derive the 14 CheXpert observations {cite}`irvin2019chexpert` from the report
# text with a rule-based labeler, and check them against a second, independent scheme built
# from the MeSH terms.
#
# **Objectives.** By the end of this chapter you will be able to
#
# 1. describe what the archive holds and choose one frontal image per report from
#    conflicting view evidence (§ Dataset card, § Views);
# 2. turn free-text reports into three-valued CheXpert labels with mention, negation and
#    uncertainty rules, and say where those rules differ from CheXpert's (§ The labeler);
# 3. measure how imbalanced and entangled the 14 findings are (§ Label prevalence,
#    § Which findings occur together, § Report length);
# 4. judge derived labels against an independent human coding with Cohen's kappa
#    (§ How trustworthy are the labels?);
# 5. read what the `demo` profile's synthetic images are, which verdicts they can decide
#    and which they cannot (§ The `demo` profile's images);
# 6. split multi-label data by report, stratified and without leakage (§ The split).
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# |---|---|---|
# | Python, pandas (DataFrames, `groupby`, boolean masks) | Necessary | every code cell |
# | Chest radiographs: frontal (PA/AP) and lateral views, the CheXpert findings | Helpful | {cite}`irvin2019chexpert`; the {doc}`../glossary` |
# | Precision, recall, F1; {term}`Cohen's kappa` | Helpful | defined where they are used |
# | Multi-label classification, class imbalance | Helpful | chapter 2 builds on it |
#
# **Time to learn**: 50 minutes.

# %% tags=["parameters"]
profile = "demo"  # demo or full: which inputs; the reports are real in both
uncertain_policy = "positive"  # uncertain mentions: positive (U-Ones) or negative
split_seed = 0  # seed of the report-level stratified split
split_fractions = [0.7, 0.1, 0.2]  # train, val, test fractions of reports
views = ["frontal"]  # frontal (one per report), frontal-any, lateral, all, PA, AP, ...
n_examples = 4  # example reports shown with their extracted labels
reports_path = ""  # report archive; empty uses the copy shipped with torchxrayvision
style = "target"  # demo: phantom style of the IU-Xray images (as chapter 2)

# %%
import json
import re
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML
from myst_nb import glue
from sklearn.metrics import roc_auc_score

from helpers.analysis import findings
from helpers.book import display
from helpers.book.plots import show_with_mask
from helpers.book.stamp import make_stamp, show_stamp
from helpers.config import get_profile
from helpers.data import iuxray, label_rules, labels
from helpers.phantoms import drawers, rendering
from helpers.protocols import models

get_profile(profile)
study_data = iuxray.load_study_data(uncertain_policy, split_seed, split_fractions,
                                    views, reports_path)
table, split = study_data.table, study_data.split
images, reports = table.images, table.reports
LABELS = list(labels.CHEXPERT_LABELS)
show_stamp(make_stamp(profile, "none (data chapter)", study_data.split_hash,
                      label_table_hash=table.hash))

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
audit = iuxray.view_audit(images)
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
# In code, the rule for one report's candidates (from `helpers/data/iuxray.py`):
#
# ```{literalinclude} ../../helpers/data/iuxray.py
# :pyobject: _select_in_report
# ```
#
# How many reports each rule decided, and how many frontal candidates it kept and dropped:

# %%
is_px = images.view_source.eq("pixels")
px_reports = images[is_px & images.view.ne("LATERAL")].report_id
multi = (images[images.report_id.isin(px_reports)]
         .groupby("report_id").filter(lambda g: len(g) > 1))
first_is_px = multi.groupby("report_id").apply(
    lambda g: g.sort_values("image_id", key=lambda c: c.map(iuxray._natural_key))
    .iloc[0].view_source == "pixels")
glue("first_id_agree",
     f"{first_is_px.mean():.1%} ({first_is_px.sum()} of {len(first_is_px)})",
     display=False)
glue("n_several_px", int(audit["rules"].loc["several pixel-confirmed", "reports"]),
     display=False)
audit["rules"]

# %% [markdown]
# The audit before and after the selection, over the reports that have at least one image:

# %%
per = audit["per_report"]
before, after = per["before selection"], per["after selection"]
glue("n_frontal_before", int(before["frontal images"]), display=False)
glue("n_frontal_after", int(after["frontal images"]), display=False)
glue("n_multi_before", int(before["reports with 2+ frontal images"]), display=False)
glue("n_zero_frontal", int(after["reports with 0 frontal images"]), display=False)
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
#   (`indiana_projections.csv`) that labels every image *Frontal* or *Lateral*. The book does
#   not download it: the counts in the table are those independent public analyses report.
# - R2Gen {cite}`chen2020r2gen`, the most reused report-generation split, keeps only reports
#   with exactly two images (a frontal and a lateral): its released annotation file holds the
#   study counts below, so one frontal per study.
# - The torchxrayvision pixel call {cite}`cohen2022torchxrayvision` (our strongest evidence)
#   names the frontal image of the reports it covers, at most one per report.

# %%
published = pd.DataFrame([
    # Kaggle indiana_projections.csv, as counted by independent public analyses
    {"source": "Kaggle projection table", "reports": 3851, "frontal images": 3818,
     "reports without a frontal": 162, "one frontal per report": "no"},
    # R2Gen annotation.json: 2,069 / 296 / 590 studies, two images each
    {"source": "R2Gen split (two-image studies)", "reports": 2069 + 296 + 590,
     "frontal images": 2069 + 296 + 590, "reports without a frontal": 0,
     "one frontal per report": "yes"},
])


def our_row(source, column, one_per_report):
    """One row of the comparison from a column of the audit table."""
    return {"source": source, "reports": images.report_id.nunique(),
            "frontal images": int(per.loc["frontal images", column]),
            "reports without a frontal":
                int(per.loc["reports with 0 frontal images", column]),
            "one frontal per report": one_per_report}


tsne = is_px & images.view.ne("LATERAL")
ours = pd.DataFrame([
    {"source": "torchxrayvision pixel call (shipped file)",
     "reports": int(images.report_id[is_px].nunique()),
     "frontal images": int(tsne.sum()), "reports without a frontal": np.nan,
     "one frontal per report": "yes"},
    our_row("this study, before selection", "before selection", "no"),
    our_row("this study, after selection", "after selection", "yes"),
])
counts = pd.concat([published, ours], ignore_index=True).set_index("source")
counts["reports without a frontal"] = counts["reports without a frontal"].map(
    lambda v: "n/a" if pd.isna(v) else int(v))
kaggle = counts.loc["Kaggle projection table"]
selected = counts.loc["this study, after selection", "frontal images"]
glue("kaggle_frontal", int(kaggle["frontal images"]), display=False)
glue("kaggle_diff", int(kaggle["frontal images"] - selected), display=False)
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
# The `demo` profile renders one phantom per selected frontal image, so it follows the same
# rule.
#
# ## The labeler
#
# The labeler follows the rules of the CheXpert labeler {cite}`irvin2019chexpert`, restated
# for a parser-free spaCy pipeline (the rules are data, in `helpers/data/label_rules.py`):
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
#    ({term}`U-Ones <Uncertainty policy>`, the default) an uncertain observation counts as
#    present; with `"negative"` (U-Zeros) as absent. Not-mentioned is always absent.
#
# How many mentions in the whole archive each rule decided:

# %%
labeler = labels.ReportLabeler()
report_text = (reports.findings.fillna("") + " "
               + reports.impression.fillna("")).str.strip()
all_mentions = [m for doc in labeler.nlp.pipe(report_text)
                for m in labeler._mentions(doc)]
mention_of = ["other finding" if m.label == labels.OTHER_FINDING else "observation"
              for m in all_mentions]
by_rule = pd.crosstab(pd.Series([m.rule for m in all_mentions], name="rule"),
                      pd.Series(mention_of, name="mention of"),
                      margins=True, margins_name="total")
by_rule = (by_rule.reindex([*labels.RULE_CLASSES, "heart failure", "total"])
           .fillna(0).astype(int))
glue("n_or_coordinated", int(by_rule.loc["or-coordination", "total"]), display=False)
by_rule

# %% [markdown]
# Most mentions are negated ("no pleural effusion"); {glue:text}`n_or_coordinated` are
# uncertain only because an "or" coordinates them (CheXpert's `conj:or` rule). The *other
# findings* are nearly all positive: they are what radiologists name in otherwise normal
# reports, and they are why No Finding is rarer here than "none of the 12 observations".
#
# ### Where our rules still differ from CheXpert's
#
# The CheXpert labeler classifies mentions on a dependency parse; ours uses NegEx scopes and
# a few deliberate changes. Each difference and the reason we keep it:

# %% tags=["hide-input"]
diffs = pd.DataFrame(label_rules.DIFFERENCES).set_index("rule")
(diffs.style.set_table_attributes('class="text-table"')
 .set_properties(**{"text-align": "left", "white-space": "normal"}))

# %% [markdown]
# A few reports, with each mention highlighted (green: positive, grey struck-through:
# negated, orange: uncertain; hover for the label and the rule that decided it):

# %% tags=["hide-input"]
with_text = reports[(reports.findings.str.len() + reports.impression.str.len()) > 0]
abnormal = with_text[with_text["No Finding"] == 0]
normal = with_text[with_text["No Finding"] == 1]
picks = pd.concat([abnormal.sample(max(n_examples - 1, 0), random_state=split_seed),
                   normal.sample(min(1, n_examples), random_state=split_seed)])
blocks = []
for _, r in picks.iterrows():
    text = f"FINDINGS: {r.findings} IMPRESSION: {r.impression}"
    pos = [c for c in LABELS if r[c] == 1]
    blocks.append(f"<p><b>{r.report_id}</b> &rarr; {', '.join(pos) or 'none'}<br>"
                  f"{labels.mentions_html(text, labeler.mentions(text))}</p>")
HTML("".join(blocks))

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

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(6.8, 4.6))
order = prev.sort_values("text labeler").index
y = np.arange(len(order))
ax.barh(y - 0.2, prev.loc[order, "text labeler"], 0.4, label="text labeler",
        color="#3366aa")
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

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(6.8, 6.8))
im = ax.imshow(np.log10(co + 1), cmap="viridis")
ax.set_xticks(range(len(LABELS)), LABELS, rotation=70, ha="right", fontsize=9)
ax.set_yticks(range(len(LABELS)), LABELS, fontsize=9)
for i in range(len(LABELS)):
    for j in range(len(LABELS)):
        ax.text(j, i, co[i, j], ha="center", va="center", fontsize=9,
                color="white" if co[i, j] < co.max() / 3 else "black")
fig.colorbar(im, ax=ax, label="log10(reports + 1)", fraction=0.04)
ax.set_title("Label co-occurrence (reports)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Report length
#
# BiomedCLIP's text tower reads at most 256 tokens; IU-Xray reports are short. Lengths are in
# words of FINDINGS + IMPRESSION.

# %%
n_words = report_text.str.split().str.len()
glue("median_words", int(n_words.median()), display=False)
glue("p99_words", int(n_words.quantile(0.99)), display=False)

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(6.8, 3.2))
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
# rules out No Finding. Then we compare, per report: prevalence in each scheme, F1 of the
# text labels taking MeSH as the reference, and Cohen's kappa {cite}`cohen1960kappa`,
#
# $$ \kappa = \frac{p_o - p_e}{1 - p_e}, \qquad
#    p_e = \pi_t \pi_m + (1 - \pi_t)(1 - \pi_m), $$ (eq-kappa)
#
# the observed agreement $p_o$ (the fraction of reports on which the two schemes agree)
# corrected for the agreement $p_e$ expected by chance from the two prevalences $\pi_t$
# (text) and $\pi_m$ (MeSH). $\kappa = 0$ is chance agreement, 1 perfect agreement. In code,
# from `helpers/data/labels.py` (scikit-learn computes eq. {eq}`eq-kappa`):
#
# ```{literalinclude} ../../helpers/data/labels.py
# :pyobject: agreement
# ```

# %%
agr = labels.agreement(text_bin, mesh_bin)
glue("median_kappa", f"{agr.kappa.median():.2f}", display=False)
worst = agr.kappa.idxmin()
glue("worst_kappa_label", worst, display=False)
glue("worst_kappa", f"{agr.loc[worst, 'kappa']:.2f}", display=False)
(agr.style.format("{:.3f}")
 .background_gradient(subset=["kappa"], cmap="RdYlGn", vmin=0, vmax=1))

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
pol = pd.DataFrame({p: labels.binarize(three, p).mean()
                    for p in labels.UNCERTAIN_POLICIES})
pol["uncertain mentions"] = (three == labels.UNCERTAIN).sum()
pol.style.format({"positive": "{:.3f}", "negative": "{:.3f}"})

# %% [markdown]
# ## The `demo` profile's images
#
# The `demo` profile cannot ship IU-Xray's images, so every selected frontal image (one per
# report, § Views) gets a synthetic radiograph, a {term}`phantom`, drawn from that report's
# real labels. The anatomy is grounded in real annotations that ship with torchxrayvision:
# lung fields come from hundreds of radiologist-drawn lung masks, and each finding's position
# and size are sampled from radiologists' boxes for that class (NIH ChestX-ray14
# {cite}`wang2017chestxray8`; VinDr-CXR for consolidation, pleural thickening and
# mediastinal widening). Each finding is drawn together with its exact pixel mask, which
# chapter 6 uses as ground truth for Grad-CAM. The study renders
# {glue:text}`n_phantoms` phantoms in the {glue:text}`phantom_style` style.
#
# Two acquisition *styles* give the distribution shift the study is about: `source` (crisp,
# high contrast: the style of the corpus the demo model is pretrained on) and `target`
# (brighter, lower contrast, grainier, blurrier, tilted and shifted: the style of the demo's
# IU-Xray images). Their parameters:

# %%
glue("n_phantoms", len(split), display=False)
glue("phantom_style", style, display=False)
styles = rendering.style_table()
glue("subtle_target", f"{styles.loc['target', 'subtle_fraction']:.0%}", display=False)
glue("subtle_source", f"{styles.loc['source', 'subtle_fraction']:.0%}", display=False)
styles.T.rename_axis(index="parameter", columns="style")

# %% [markdown]
# The last row is the share of drawn findings rendered *subtle*: {glue:text}`subtle_target`
# in the `target` style and {glue:text}`subtle_source` in the `source` style, whose corpus
# stands in for the textbook-clear figures BiomedCLIP was pretrained on.
#
# ### One drawer per finding, and which ones share code
#
# Each finding has its own drawing function and its own random stream, derived from the
# image's seed and the finding's name; a drawer reads the patient's anatomy and its own
# stream, never another finding. Some drawers are built from the same code, so on the demo
# they differ only in the parameters listed in their docstrings:

# %%
families = pd.DataFrame({
    "drawing family": drawers.DRAWING_FAMILY,
    "drawer": {k: f.__name__ for k, f in drawers.FINDING_DRAWERS.items()},
    "compositing stage": drawers.FINDING_STAGE,
})
families.index.name = "finding"
core = families["drawing family"].str.replace(r" \(.*\)$", "", regex=True)
groups = {fam: list(members) for fam, members in
          core.groupby(core, sort=False).groups.items()}
families["shares drawing code with"] = [
    ", ".join(m for m in groups[core[k]] if m != k) or "–" for k in families.index]
shared = {fam: m for fam, m in groups.items() if len(m) > 1}
glue("n_drawers", len(families), display=False)
glue("n_families", len(groups), display=False)
glue("shared_families", "; ".join(f"the {fam} ({', '.join(m)})"
                                  for fam, m in shared.items()), display=False)
display.table(families)

# %% [markdown]
# The {glue:text}`n_drawers` findings are drawn by {glue:text}`n_drawers` drawers in
# {glue:text}`n_families` families. The families with more than one member are
# {glue:text}`shared_families`. Within a family a model can tell the findings apart only by
# what the parameters change (box source, size, density, sign of the contrast, air
# bronchograms, Kerley lines), so on the demo a per-label score inside a family is partly a
# score of the family, and adding one member to an image can look like another to any
# model. Chapter 3 shows these families beside its counterfactual co-occurrence test.
#
# ### Every finding at full strength, and hedged
#
# A finding's *conspicuity* $c \in (0, 1]$ scales its contrast (for Cardiomegaly: how far the
# heart grows; for Enlarged Cardiomediastinum: how far the mediastinum widens). The renderer
# draws it from the finding's own stream,
#
# $$ c = c_0 \cdot h^{[\text{label} = -1]}, \qquad
#    c_0 \sim \begin{cases} U(\text{subtle range}) & \text{with probability } f \\
#                           U(\text{clear range}) & \text{otherwise,} \end{cases} $$ (eq-conspicuity)
#
# with $f$ the style's subtle fraction and $h$ = `rendering.HEDGE_FACTOR`
# ({glue:text}`hedge_factor`) for a finding the report mentions with uncertainty (label
# $-1$); Cardiomegaly and Support Devices (metal) always have $c_0 = 1$. The renderer reads
# the report's three-valued labels, never the binarised ones, so the uncertainty policy
# changes labels only, never a pixel.
#
# Below, one patient (the same anatomy and acquisition in every panel) with each finding at
# full strength ($c = 1$) beside the same report with that finding hedged ($c = h$); red: the
# finding's exact mask. The last pair is the same normal patient in both styles.

# %%
hedge = rendering.HEDGE_FACTOR
glue("hedge_factor", f"{hedge:g}", display=False)
gallery_seed = rendering.seed_for("gallery", style)
finding_names = list(drawers.FINDING_DRAWERS)

# %% tags=["hide-input"]
fig, axes = plt.subplots(7, 4, figsize=(6.8, 15.5))
for k, label in enumerate(finding_names):
    for j, (value, c, name) in enumerate([(1, 1.0, "full"), (-1, hedge, "hedged")]):
        img, bits = rendering.render({label: value}, gallery_seed, style,
                                    conspicuity={label: c})
        show_with_mask(axes.flat[2 * k + j], img, rendering.mask_of(bits, label),
                       f"{textwrap.fill(label, 17)}\n{name} (c = {c:g})")
for j, st in enumerate(["source", style]):
    img, _ = rendering.render({}, gallery_seed, st)
    show_with_mask(axes.flat[2 * len(finding_names) + j], img, None,
                   f"No Finding\n({st})")
fig.suptitle(f"Each finding at full strength and hedged ({style} style)", y=1.0)
fig.tight_layout()
plt.show()

# %% [markdown]
# Without the override, the renderer applies the hedge itself: for each finding, we compare
# the conspicuity it draws for an uncertain label with the one it draws for a positive label
# from the same stream.

# %%
hedge_ok = [
    np.isclose(rendering.finding_plan({lab: -1}, s, style=style)[lab],
               hedge * rendering.finding_plan({lab: 1}, s, style=style)[lab])
    for lab in finding_names for s in range(5)]
glue("hedge_checks", f"{sum(hedge_ok)} of {len(hedge_ok)}", display=False)

# %% [markdown]
# In {glue:text}`hedge_checks` (finding, seed) pairs the uncertain label is drawn at exactly
# {glue:text}`hedge_factor` times the positive one's conspicuity.
#
# ### Counterfactual phantoms: one finding toggled, nothing else changed
#
# Because every finding draws from its own stream and changes pixels only inside its
# support, an image can be re-rendered with one finding forced present and forced absent
# (`rendering.render_counterfactual`). The mask of a finding is every output pixel whose value
# can depend on it (its support, widened by the blur kernel and carried through the
# positioning warp), so the two images must be identical outside it. Here the first test
# image (in natural order) whose report names Cardiomegaly and a pleural effusion,
# {glue:text}`cf_image`, rendered as the study renders it (its labels, its seed, the
# label-noise rates of § Label noise), with Pleural Effusion toggled:

# %%
noise = rendering.noise_rates(reports)
test_rows = split[split.split == "test"]
has = lambda c: test_rows[f"text:{c}"] == 1  # noqa: E731
cf_row = (test_rows[has("Cardiomegaly") & has("Pleural Effusion")]
          .sort_values("image_id", key=lambda s: s.map(iuxray._natural_key)).iloc[0])
cf_labels = [cf_row[f"text:{c}"] for c in LABELS]
cf_seed = rendering.seed_for(cf_row.image_id, style)
toggle = "Pleural Effusion"
with_, without, mask = rendering.render_counterfactual(
    cf_labels, cf_seed, toggle, style=style, noise=noise)
diff = np.abs(with_.astype(int) - without.astype(int))
glue("cf_image", cf_row.image_id, display=False)
glue("cf_changed", int((diff > 0).sum()), display=False)
glue("cf_mask", int(mask.sum()), display=False)
glue("cf_outside", int(diff[~mask].max()), display=False)

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 3, figsize=(6.8, 3.0))
show_with_mask(axes[0], with_, mask, f"{cf_row.image_id}\nwith {toggle}")
show_with_mask(axes[1], without, mask, f"without\n{toggle}")
shown = axes[2].imshow(diff, cmap="magma")
fig.colorbar(shown, ax=axes[2], fraction=0.046, label="grey levels")
axes[2].contour(mask.astype(float), levels=[0.5], colors=["#30c0ff"], linewidths=0.9)
axes[2].set_title("|with − without|\n(blue: the mask)", fontsize=9)
axes[2].set_axis_off()
fig.tight_layout()
plt.show()

# %% [markdown]
# The toggle changes {glue:text}`cf_changed` pixels, all inside the
# {glue:text}`cf_mask`-pixel mask; the largest difference outside the mask is
# {glue:text}`cf_outside` grey levels. The same check for every finding toggled on this
# image:

# %%
rows = []
for lab in finding_names:
    a, b, m = rendering.render_counterfactual(cf_labels, cf_seed, lab, style=style,
                                             noise=noise)
    d = np.abs(a.astype(int) - b.astype(int))
    rows.append({"toggled": lab, "mask (px)": int(m.sum()),
                 "pixels changed": int((d > 0).sum()),
                 "changed outside the mask": int((d[~m] > 0).sum()),
                 "max |difference| outside": int(d[~m].max())})
toggles = pd.DataFrame(rows).set_index("toggled")
glue("cf_all_outside", int(toggles["max |difference| outside"].max()), display=False)
glue("cf_n_toggles", len(toggles), display=False)
toggles

# %% [markdown]
# Over all {glue:text}`cf_n_toggles` toggles the largest difference outside the mask is
# {glue:text}`cf_all_outside`: a change in a model's score between the two images is caused
# by that finding's pixels and nothing else. Chapter 3 uses exactly this to test whether a
# probe's score for one finding moves when another finding is added.
#
# ### Label noise: the images do not simply repeat the labels
#
# If every labelled finding were drawn and nothing else, a phantom would be a picture of
# its label vector, and the text labels would be perfect by construction. Real labels are
# not: § How trustworthy showed the labeler and the MeSH coders disagreeing. The renderer
# turns that disagreement into label noise, taking MeSH as the image's truth. For each
# finding $j$, over the reports,
#
# $$ m^{+}_j = P(\text{MeSH}_j = 0 \mid \text{text}_j = 1), \quad
#    m^{?}_j = P(\text{MeSH}_j = 0 \mid \text{text}_j = -1), \quad
#    e_j = P(\text{MeSH}_j = 1 \mid \text{text}_j \in \{0, \text{not mentioned}\}), $$ (eq-noise)
#
# and a positive finding is left out of the image with probability $m^{+}_j$, an uncertain
# one with $m^{?}_j$, and an unlabelled one is drawn with probability $e_j$, each from the
# finding's own stream. In code, from `helpers/phantoms/rendering.py`:
#
# ```{literalinclude} ../../helpers/phantoms/rendering.py
# :pyobject: noise_rates
# ```

# %% tags=["hide-input"]
(noise.style.format("{:.3f}", subset=list(rendering.NOISE_COLUMNS))
 .background_gradient(subset=list(rendering.NOISE_COLUMNS), cmap="Oranges",
                      vmin=0, vmax=1)
 .format_index(display.header, axis=1))

# %% [markdown]
# What those rates do to the study's {glue:text}`n_phantoms` images: per finding, the
# images whose binarised label (uncertain policy: {glue:text}`policy`) is positive, the
# images in which the finding is drawn, and the two kinds of disagreement. The same pass
# records each image's cardiothoracic ratio for the next section.

# %%
glue("policy", uncertain_policy, display=False)
ctr_normal = drawers.CTR_NORMAL
ctr_big = drawers.CTR_CARDIOMEGALY


def drawn_ctr(three_valued, seed):
    """(drawn findings with their conspicuity, the cardiothoracic ratio drawn)."""
    plan = rendering.finding_plan(three_valued, seed, noise=noise, style=style)
    z = drawers.anatomy(rendering.stream(seed, "anatomy"), 224).ctr_z
    normal, big = ctr_normal[0] + ctr_normal[1] * z, ctr_big[0] + ctr_big[1] * z
    return plan, normal + plan.get("Cardiomegaly", 0.0) * (big - normal)


text_cols = [f"text:{c}" for c in LABELS]
plans, ctr = [], []
for iid, values in zip(split.image_id, split[text_cols].to_numpy(float)):
    plan, r = drawn_ctr(values, rendering.seed_for(iid, style))
    plans.append(plan)
    ctr.append(r)
ctr = np.array(ctr)
drawn = pd.DataFrame([{lab: lab in p for lab in finding_names} for p in plans])
labelled = split[finding_names].reset_index(drop=True).astype(bool)
realised = pd.DataFrame({
    "labelled positive": labelled.sum(),
    "drawn": drawn.sum(),
    "labelled, not drawn": (labelled & ~drawn).sum(),
    "drawn, not labelled": (drawn & ~labelled).sum(),
})
either = realised["labelled positive"] + realised["drawn, not labelled"]
realised["disagree (of labelled or drawn)"] = (
    (realised["labelled, not drawn"] + realised["drawn, not labelled"])
    / either.clip(lower=1))
top_miss = noise.miss_positive.idxmax()
glue("top_miss_label", top_miss, display=False)
glue("top_miss", f"{noise.loc[top_miss, 'miss_positive']:.2f}", display=False)
glue("top_miss_n", int(noise.loc[top_miss, "n_positive"]), display=False)
top_extra = noise.extra.idxmax()
glue("top_extra_label", top_extra, display=False)
glue("top_extra", f"{noise.loc[top_extra, 'extra']:.3f}", display=False)
glue("top_extra_n", int(realised.loc[top_extra, "drawn, not labelled"]), display=False)
glue("n_not_drawn", int(realised["labelled, not drawn"].sum()), display=False)
glue("n_pos_labels", int(realised["labelled positive"].sum()), display=False)
glue("n_unlabelled_drawn", int(realised["drawn, not labelled"].sum()), display=False)
for group in ("positive", "uncertain"):
    n = noise[f"n_{group}"]
    glue(f"small_{group}", ", ".join(f"{lab} ({int(k)})" for lab, k in n.items()
                                     if 0 < k < 30) or "none", display=False)
realised.style.format({"disagree (of labelled or drawn)": "{:.0%}"})

# %% [markdown]
# The largest miss rate among positives is {glue:text}`top_miss_label`'s
# ({glue:text}`top_miss`, over {glue:text}`top_miss_n` positive reports); the largest rate of
# unlabelled findings drawn is {glue:text}`top_extra_label`'s ({glue:text}`top_extra`), which
# over thousands of unlabelled images draws it in {glue:text}`top_extra_n` images whose label
# says absent. Altogether {glue:text}`n_not_drawn` of the {glue:text}`n_pos_labels` positive
# labels have no finding in their image, and {glue:text}`n_unlabelled_drawn` findings are
# drawn without a label. Uncertain mentions are missed far more often than positive ones:
# MeSH rarely codes a hedge. Some groups are small (under 30 reports; positive:
# {glue:text}`small_positive`; uncertain: {glue:text}`small_uncertain`), so their rates rest
# on a handful of reports. Taking MeSH as the truth is an **upper-end assumption**: MeSH
# also misses findings, so part of this disagreement is MeSH's error, not the labeler's,
# and the demo's images probably contradict their labels more often than real films do.
#
# ### Cardiomegaly: overlapping cardiothoracic ratios
#
# Radiologists call a heart enlarged when the {term}`cardiothoracic ratio` (CTR: heart width
# over thoracic width) is large, classically above 0.5 on a PA film {cite}`danzer1919ctr`,
# but the ratios of normal and enlarged hearts overlap. The phantoms reproduce that
# overlap. Each patient has one standard-normal draw $z$ (from the anatomy stream) that
# places them in both distributions, and the drawn heart grows from the normal ratio towards
# the enlarged one by the conspicuity $c$ (1, or $h$ when hedged; 0 without Cardiomegaly):
#
# $$ \text{CTR} = \mu_n + \sigma_n z
#    + c\,\big[(\mu_c + \sigma_c z) - (\mu_n + \sigma_n z)\big], $$ (eq-ctr)
#
# with $(\mu_n, \sigma_n)$ = ({glue:text}`ctr_n`) (`CTR_NORMAL`) and $(\mu_c, \sigma_c)$ =
# ({glue:text}`ctr_c`) (`CTR_CARDIOMEGALY`), $z$ clipped to $\pm 3$.
#
# In code, from `helpers/phantoms/drawers.py`:
#
# ```{literalinclude} ../../helpers/phantoms/drawers.py
# :pyobject: draw_cardiomegaly
# ```
#
# The CTR the renderer draws for each of the study's images (heart-box width over lung-field
# width), by the image's Cardiomegaly label:

# %%
glue("ctr_n", f"{ctr_normal[0]:g}, {ctr_normal[1]:g}", display=False)
glue("ctr_c", f"{ctr_big[0]:g}, {ctr_big[1]:g}", display=False)
is_pos = labelled["Cardiomegaly"].to_numpy()
bins = np.linspace(0.3, 0.75, 46)
h_neg, _ = np.histogram(ctr[~is_pos], bins, density=True)
h_pos, _ = np.histogram(ctr[is_pos], bins, density=True)
overlap = float(np.minimum(h_neg, h_pos).sum() * np.diff(bins)[0])
ctr_auroc = roc_auc_score(is_pos, ctr)
glue("ctr_overlap", f"{overlap:.0%}", display=False)
glue("ctr_auroc", f"{ctr_auroc:.3f}", display=False)
glue("ctr_neg_above", f"{(ctr[~is_pos] > 0.5).mean():.0%}", display=False)
glue("ctr_pos_below", f"{(ctr[is_pos] <= 0.5).mean():.0%}", display=False)
glue("ctr_n_pos", int(is_pos.sum()), display=False)
glue("ctr_n_neg", int((~is_pos).sum()), display=False)

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(6.8, 3.4))
ax.hist(ctr[~is_pos], bins, density=True, alpha=0.6, color="#3366aa",
        label=f"Cardiomegaly label 0 ({(~is_pos).sum()})")
ax.hist(ctr[is_pos], bins, density=True, alpha=0.6, color="#dd4444",
        label=f"Cardiomegaly label 1 ({is_pos.sum()})")
ax.axvline(0.5, color="black", lw=0.8, ls="--", label="CTR 0.5")
ax.set_xlabel("cardiothoracic ratio drawn")
ax.set_ylabel("density")
ax.set_title(f"Overlap of the two histograms: {overlap:.0%}")
ax.legend(fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# The two histograms share {glue:text}`ctr_overlap` of their area
# ({glue:text}`ctr_n_neg` negatives, {glue:text}`ctr_n_pos` positives): {glue:text}`ctr_neg_above`
# of the negatives have a CTR above 0.5 and {glue:text}`ctr_pos_below` of the positives are
# at or below it (hedged reports are drawn halfway, and a few positives are left out by
# label noise). A scorer that read the drawn CTR exactly would reach an AUROC of
# {glue:text}`ctr_auroc` for Cardiomegaly: demo AUROCs for this label should be read against
# that, not against 1.
#
# ### Resolvability: can the model see each finding at all?
#
# The demo model reads a {glue:text}`input_px`-pixel image cut into
# {glue:text}`patch_px`-pixel patches. A finding smaller than one patch, or fainter than the
# acquisition noise, may be invisible to it whatever it learns. `rendering.resolvability`
# renders each finding alone (natural conspicuity draws) with and without it, resizes both
# to the model's input and measures the mask's area and the difference's contrast against
# the noise (CNR: the 95th percentile of the difference inside the mask over the noise's
# standard deviation).

# %%
tiny_config_file = models.TINY_PRETRAINED_DIR / "open_clip_config.json"
tiny_cfg = json.loads(tiny_config_file.read_text())
input_px = int(tiny_cfg["tiny_config"]["image_size"])
patch_px = int(tiny_cfg["tiny_config"]["patch_size"])
glue("input_px", input_px, display=False)
glue("patch_px", patch_px, display=False)
resolv = rendering.resolvability(style, input_size=input_px, patch=patch_px)
not_res = resolv[~resolv.resolvable]
glue("n_resolvable", f"{int(resolv.resolvable.sum())} of {len(resolv)}", display=False)
glue("not_resolvable", "; ".join(
    f"{lab} ({r.area_patches:.2f} patches, {r.frac_resolvable:.0%} of renders "
    f"resolvable: {r.reason})" for lab, r in not_res.iterrows()) or "none",
     display=False)
glue("not_resolvable_names", ", ".join(not_res.index) or "none", display=False)
borderline = resolv[resolv.resolvable & (resolv.frac_resolvable < 1)]
glue("borderline", ", ".join(f"{lab} ({r.frac_resolvable:.0%})"
                             for lab, r in borderline.iterrows()) or "none",
     display=False)
(resolv.drop(columns=["noise_sd"])
 .style.format({"area_px": "{:.0f}", "area_patches": "{:.2f}", "thickness_px": "{:.1f}",
                "contrast": "{:.1f}", "cnr": "{:.1f}", "frac_resolvable": "{:.0%}"})
 .format_index(display.header, axis=1))

# %% [markdown]
# {glue:text}`n_resolvable` findings pass both tests. Not resolvable:
# {glue:text}`not_resolvable`. Borderline (resolvable in the median, not in every render):
# {glue:text}`borderline`. For the findings that fail, a demo model that misses them tells us
# nothing about the method: the information is gone before the first layer.
#
# ### What the demo can and cannot show
#
# **It can show** that the study's code runs end to end, offline, through the same calls as
# the real study; how the *real* labels' imbalance and co-occurrences shape a classifier
# (the labels, the split and the reports are real); what a style shift between pretraining
# and target images does to zero-shot scores; whether a model's score for a finding depends
# on that finding's pixels (counterfactual pairs identical outside the mask, to
# {glue:text}`cf_all_outside` grey levels); and where saliency falls relative to an exact
# lesion mask.
#
# **It cannot decide**
#
# - anything about BiomedCLIP: the demo model is a small proxy of its architecture,
#   pretrained on synthetic figure-caption pairs (see {doc}`../demo_profile`);
# - whether image features of one finding help recognise another: each finding is drawn
#   independently of the others, so co-occurrence reaches the images only through which
#   findings the labels switch on, never through how one finding looks beside another;
# - whether a model distinguishes findings that share drawing code
#   ({glue:text}`shared_families`) the way a radiologist does;
# - per-label verdicts for findings below the resolution limit
#   ({glue:text}`not_resolvable_names`): a miss there may be the input size, not the model;
# - how good the real labels are: label noise is MeSH disagreement taken as truth, an
#   upper-end assumption ({glue:text}`n_not_drawn` positive labels without a finding);
# - how hard real findings are: conspicuity, subtlety and the CTR overlap are choices written
#   in `helpers/phantoms/rendering.py`, grounded in real boxes and masks but not measured on IU-Xray's
#   films. For Cardiomegaly, a perfect reader of heart size would reach AUROC
#   {glue:text}`ctr_auroc` on these images.

# %% [markdown]
# ## The split
#
# Reports, not images, are split into train / validation / test, so that no report's images
# appear on both sides. The split is stratified on the 14 labels with iterative
# stratification {cite}`sechidis2011stratification`, which keeps rare labels' proportions
# similar across splits. Only images of the chosen views (parameter `views`) take part. The
# split is saved with its content hash, which every later page shows in its stamp.

# %%
st = iuxray.split_table(split)
glue("split_hash", study_data.split_hash, display=False)
missing = [(c, s) for c in LABELS for s in st.columns if st.loc[c, s] == 0]
glue("split_missing", ", ".join(f"{c} in {s}" for c, s in missing) or "none",
     display=False)
st

# %% [markdown]
# Split hash: {glue:text}`split_hash`. Label/split pairs with no positive example:
# {glue:text}`split_missing`. Thresholds, prompts and any other choice in later chapters are
# tuned on **val** and applied once to **test**.
#
# ## The findings, declared
#
# Before any model is scored, the claims this book tests are declared here, each with the
# statistic that measures it, the rule its 95% interval must clear, the **margin** by which it
# must beat its negative control (in the statistic's units), and the control itself
# ({mod}`helpers.analysis.findings`). A finding holds when its interval clears the rule, its paired
# difference from the control clears the margin, and the control is powered: its own
# interval is narrower than the margin, so it could have shown an effect that large. The
# rows of kind `finding` are the family over which the {doc}`07_results` page applies Holm's
# adjustment; rows of kind `validation` check the machinery and are never counted. Chapter
# 6's per-setting findings stand for one finding per setting (zero-shot with the selected
# prompts and with the positive prompt only, linear probe, fine-tuned):

# %%
glue("n_declared", len(findings.family()), display=False)
findings.styled(findings.registry_table())

# %% [markdown]
# That makes {glue:text}`n_declared` declared findings. Each margin is the smallest effect a
# reader would care about in its statistic's units; they live in code
# (`helpers.analysis.findings.REGISTRY`), are read by every chapter from there, and are never tuned on
# a result.
#
# ## Summary
#
# - The study's labels are derived from real report text by transparent rules and checked
#   against human MeSH coding; the agreement table says where to trust them.
# - The problem is multi-label and heavily imbalanced, with strong co-occurrences.
# - The study keeps one frontal image per report, chosen by a stated rule.
# - The `demo` images are phantoms drawn from those labels, with exact masks,
#   counterfactual twins, label noise and overlapping heart sizes; they can test a method
#   but cannot decide anything about BiomedCLIP, about visual interactions between
#   findings, or about findings below the model's resolution.
# - The split is at report level, stratified, seeded and hashed.
#
# ## What's next
#
# {doc}`02_zero_shot` asks how well a vision-language model recognises these findings
# without any training (zero-shot).
#
# ## Exercises
#
# ```{exercise}
# :label: ex-data-uncertain
#
# Under `uncertain_policy="negative"` (U-Zeros), which three labels lose the most
# positives, and how does their agreement with MeSH change?
# ```
#
# ```{solution-start} ex-data-uncertain
# :class: dropdown
# ```
#
# We binarise the three-valued labels both ways and compare each with MeSH:

# %%
by_policy = {p: labels.binarize(three, p) for p in labels.UNCERTAIN_POLICIES}
lost = (by_policy["positive"].sum() - by_policy["negative"].sum()).nlargest(3)
kappa = pd.DataFrame({f"kappa ({p})": labels.agreement(b, mesh_bin).kappa
                      for p, b in by_policy.items()})
kappa.insert(0, "positives lost", lost)
kappa.loc[lost.index].style.format({"positives lost": "{:.0f}",
                                   "kappa (positive)": "{:.3f}",
                                   "kappa (negative)": "{:.3f}"})

# %% [markdown]
# The labels radiologists hedge most lose the most positives. Where MeSH coders also skip
# hedged findings, kappa rises under U-Zeros; where they code them, it falls. Neither policy
# is "right": the choice changes what the targets mean, which is why it is a parameter.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-data-split
#
# Why is the split made by *report* rather than by image? How many test images would have a
# sibling from the same report in training under a random image-level split, with every
# image in the study, and with one frontal per report?
# ```
#
# ```{solution-start} ex-data-split
# :class: dropdown
# ```
#
# A report's images show the same chest and carry the same labels. We split the images at
# random, 70 / 30, and count test images with a sibling in training:


# %%
def leaked(image_table, seed=0):
    """Test images with a same-report image in train, under a random image split."""
    rng = np.random.default_rng(seed)
    in_train = rng.random(len(image_table)) < 0.7
    train_reports = set(image_table.report_id[in_train])
    test = image_table.report_id[~in_train]
    return int(test.isin(train_reports).sum()), len(test)


for name, image_table in [("every image", images), ("one frontal per report", split)]:
    n_leak, n_test = leaked(image_table)
    print(f"{name}: {n_leak} of {n_test} test images have a sibling in train")

# %% [markdown]
# With every image, most test images would have their twin (the other view of the same
# exam) in training, and every test metric would be optimistic. With one frontal per report
# an image split is (nearly) a report split, since few or no reports keep two images; the
# split stays at report level so that no choice of `views` can reintroduce the leak.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-data-nofinding
#
# CheXpert's rule makes *No Finding* positive only when no other finding (Support Devices
# aside) is positive. With which labels does No Finding co-occur, and how many reports have
# no positive label at all?
# ```
#
# ```{solution-start} ex-data-nofinding
# :class: dropdown
# ```

# %%
nf = LABELS.index("No Finding")
print("No Finding co-occurs with:",
      {c: int(co[nf, j]) for j, c in enumerate(LABELS) if j != nf and co[nf, j]})
print("reports with no positive label:", int((Y.sum(1) == 0).sum()))

# %% [markdown]
# No Finding co-occurs only with Support Devices, so it is strongly anti-correlated with the
# other 12 findings: a model can score it well just by detecting "anything abnormal".
# Because CheXpert's other findings (granulomas, degenerative changes, emphysema) also rule
# it out, some reports carry no positive label at all.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-data-danzer
#
# Use the classical rule "CTR above 0.5 means cardiomegaly" as a classifier of the demo's
# Cardiomegaly labels. What are its sensitivity and specificity, and which threshold on the
# drawn CTR would maximise Youden's $J$ (sensitivity + specificity − 1)?
# ```
#
# ```{solution-start} ex-data-danzer
# :class: dropdown
# ```

# %%
from sklearn.metrics import roc_curve

rule = ctr > 0.5
print(f"CTR > 0.5: sensitivity {rule[is_pos].mean():.3f}, "
      f"specificity {(~rule[~is_pos]).mean():.3f}")
fpr, tpr, thr = roc_curve(is_pos, ctr)
best = np.argmax(tpr - fpr)
print(f"best threshold {thr[best]:.3f}: sensitivity {tpr[best]:.3f}, "
      f"specificity {1 - fpr[best]:.3f}")

# %% [markdown]
# Because the two CTR distributions overlap, no threshold separates them: some normal
# hearts exceed 0.5 and some enlarged (or hedged, or noise-dropped) ones do not. The best
# threshold lies where the two histograms cross, and even there both error rates stay well
# above zero: from heart size alone, no model on the demo can do better.
#
# ```{solution-end}
# ```
