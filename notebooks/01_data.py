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
# what the labels are, how trustworthy they are, how rare each finding is, and how the
# reports are split: every later chapter inherits this chapter's label table and split.
#
# IU-Xray (the Indiana University chest X-ray collection, distributed through Open-I
# {cite}`demner2016preparing`) holds radiology reports (FINDINGS and IMPRESSION), human-coded
# MeSH terms, and frontal and lateral images, but no CheXpert labels. We derive the 14
# CheXpert observations {cite}`irvin2019chexpert` from the report text with a rule-based
# labeler and check them against the MeSH terms. {doc}`01b_phantoms` then shows the
# synthetic images the `demo` profile draws from these labels.
#
# **Objectives.** By the end of this chapter you will be able to
#
# 1. choose one frontal image per report from conflicting view evidence (§ Views);
# 2. turn free-text reports into three-valued CheXpert labels with mention, negation and
#    uncertainty rules (§ The labeler);
# 3. measure how imbalanced and entangled the 14 findings are (§ Label prevalence);
# 4. judge derived labels against an independent human coding with Cohen's kappa
#    (§ How trustworthy are the labels?);
# 5. split multi-label data by report without leakage, and declare the findings to be tested
#    before any model is scored (§ The split, § The findings, declared).
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
# **Time to learn**: 40 minutes.

# %% tags=["parameters"]
profile = "demo"  # demo or full: which inputs; the reports are real in both
uncertain_policy = "positive"  # uncertain mentions: positive (U-Ones) or negative
split_seed = 0  # seed of the report-level stratified split
split_fractions = [0.7, 0.1, 0.2]  # train, val, test fractions of reports
views = ["frontal"]  # frontal (one per report), frontal-any, lateral, all, PA, AP, ...
n_examples = 4  # example reports shown with their extracted labels
reports_path = ""  # report archive; empty uses the copy shipped with torchxrayvision

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML
from myst_nb import glue

from helpers.analysis import findings
from helpers.book.stamp import make_stamp, show_stamp
from helpers.config import get_profile
from helpers.data import iuxray, label_rules, labels

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
# Nothing is dropped silently: the loader counts malformed XML, reports without text or
# images, and images no report references.

# %%
n_reports, n_images = len(reports), len(images)
glue("n_reports", n_reports, display=False)
glue("n_images", n_images, display=False)
glue("n_no_text", len(table.load_report.reports_without_text), display=False)
glue("n_no_image", len(table.load_report.reports_without_images), display=False)
table.load_report.summary().style.hide(axis="index")

# %% [markdown]
# The archive holds {glue:text}`n_reports` reports referencing {glue:text}`n_images` images.
# {glue:text}`n_no_text` reports have no FINDINGS or IMPRESSION text, so CheXpert's rule makes
# them *No Finding*. {glue:text}`n_no_image` reports have no image: they count in the label
# statistics below but cannot enter the image split.
#
# ### Views: one frontal image per report
#
# The DICOM `View Position` tag is missing for about a third of the images and noisy for the
# rest. We infer each image's view from four kinds of evidence, strongest first: the
# pixel-derived frontal/lateral call that ships with torchxrayvision
# {cite}`cohen2022torchxrayvision` (a t-SNE clustering of the images), the DICOM tag, the
# DICOM patient orientation, and the other image of a two-image report. Images by inferred
# view (rows) and the evidence that decided it (columns):

# %%
audit = iuxray.view_audit(images)
glue("n_unknown_view", int((images.view == "UNKNOWN").sum()), display=False)
audit["by_source"]

# %% [markdown]
# {glue:text}`n_unknown_view` images stay `UNKNOWN`. DICOM tags are often copied across an
# exam's images, so a report can hold a pixel-confirmed frontal *and* a sibling tagged "PA"
# that the pixels call lateral (or never saw). IU-Xray exams are one frontal and one lateral
# image, so the study keeps **one frontal image per report**, chosen by a stated rule:
#
# 1. **Stronger evidence wins**: pixels beat DICOM tags, which beat orientation, which beats
#    report pairing; a DICOM-only "PA" beside a pixel-confirmed frontal is dropped.
# 2. **Ties go to the first image id** (natural order: `-4004` before `-12012`), the exam's
#    first exposure. Where the pixels identify the frontal image, it is the first id in
#    {glue:text}`first_id_agree` of reports.
# 3. **Pixels may keep more**: candidates all confirmed by pixels are all kept (the exam had
#    two frontals); this happens in {glue:text}`n_several_px` reports.
#
# In code, the rule for one report's candidates (from `helpers/data/iuxray.py`):
#
# ```{literalinclude} ../../helpers/data/iuxray.py
# :pyobject: _select_in_report
# ```
#
# How many reports each rule decided, and the candidates it kept and dropped:

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
# {glue:text}`n_frontal_after` selected frontals. {glue:text}`n_zero_frontal` reports have no
# frontal candidate and take no part in the frontal study.
#
# **Published frontal counts**, a sanity check rather than a target, since other
# distributions label views differently: the Kaggle distribution's projection table
# {cite}`raddar_iuxray_kaggle` (`indiana_projections.csv`, as independent public analyses
# count it; the book does not download it), R2Gen's split {cite}`chen2020r2gen` (two-image
# studies only, one frontal each), and the torchxrayvision pixel call (at most one frontal
# per report it covers).

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
# {glue:text}`kaggle_diff` more than our selection, since it keeps a report's second frontal;
# its reports without a frontal ({glue:text}`kaggle_zero`) are close to ours. Before the
# selection our count was far above every published one: the extra images were most likely
# laterals with a copied "PA" tag. The `demo` profile draws one phantom per selected frontal
# ({doc}`01b_phantoms`).
#
# ## The labeler
#
# The labeler restates the CheXpert labeler's rules {cite}`irvin2019chexpert` for a
# parser-free spaCy pipeline (the rules are data, in `helpers/data/label_rules.py`):
#
# 1. **Mentions.** An entity ruler finds mentions of each observation from CheXpert's phrase
#    lists, as whole words with their inflections ("scarring" is a Lung Opacity, "pleural scarring" is Pleural Other, "pericardial
#    effusion" is *not* an effusion), and CheXpert's *other findings* (emphysema, granulomas,
#    degenerative changes and some fifty more), which are none of the 14 observations.
# 2. **Pre-negation uncertainty.** "cannot exclude", "is not excluded", "cannot rule out" and
#    "no new" make a mention uncertain even though they contain a negation.
# 3. **Negation.** NegEx {cite}`chapman2001negex` (the `negspacy` implementation, clinical
#    termset with CheXpert's absence cues) marks mentions in the scope of "no", "without",
#    "is not seen", "has resolved", ... as negative. A hedge ends a negation's scope: in "no
#    pneumothorax, possible effusion" only the pneumothorax is negated.
# 4. **Post-negation uncertainty.** Mentions no negation reached are uncertain in the scope of
#    CheXpert's hedges ("may", "possible", "suspicious for", "versus", ...), when coordinated
#    by "or" ("atelectasis or scarring": both uncertain), or when the phrase is itself a hedge
#    ("vascular congestion"). As in CheXpert, "likely", "probably" and "consistent with" are
#    **not** hedges, and "heart failure" makes Cardiomegaly uncertain.
# 5. **Report level.** Per observation: any positive mention gives 1, else any uncertain one
#    $-1$, else any negative one 0, else "not mentioned". *No Finding* is 1 only when nothing
#    but Support Devices is positive or uncertain: a pacemaker may co-occur with No Finding, a
#    calcified granuloma (an other finding) may not.
# 6. **Uncertainty policy.** With `uncertain_policy="positive"`
#    ({term}`U-Ones <Uncertainty policy>`, the default) an uncertain observation counts as
#    present; with `"negative"` (U-Zeros) as absent. Not mentioned is always absent.
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
# uncertain only through an "or". The *other findings* are nearly all positive: radiologists
# name them in otherwise normal reports, which makes No Finding rarer than "none of the 12
# observations".
#
# ### Where our rules still differ from CheXpert's
#
# CheXpert classifies mentions on a dependency parse; ours uses NegEx scopes and a few
# deliberate changes, each with its reason:

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
# Prevalence of each observation among reports, under both label schemes (log scale):

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
# observation, {glue:text}`rarest_label`, is present in {glue:text}`rarest_prev` of them.
# Predicting "No Finding" everywhere gets most exact matches right, which is why the study
# reports ranking metrics (LRAP, coverage error) and per-label scores beside F1.
#
# ## Which findings occur together
#
# Reports with both observations (diagonal: each observation's count). Chapter 3 asks
# whether a linear probe exploits these correlations.

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
# BiomedCLIP's text tower reads at most 256 tokens. Words of FINDINGS + IMPRESSION:

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
# The median report has {glue:text}`median_words` words and 99% at most
# {glue:text}`p99_words`, far inside the context.
#
# ## How trustworthy are the labels? Text labeler against MeSH
#
# The MeSH terms were coded by people, independently of our rules. We map them to the same 14
# observations (`Cardiac Shadow/enlarged` → Cardiomegaly, `Implanted Medical Device` →
# Support Devices, ...) with the labeler's definitions (`Cicatrix/lung` is a Lung Opacity; a
# term naming one of CheXpert's other findings, such as `Emphysema`, rules out No Finding).
# Then we compare, per report: prevalence in each scheme, F1 of the text labels taking MeSH
# as the reference, and Cohen's kappa {cite}`cohen1960kappa`,
#
# $$ \kappa = \frac{p_o - p_e}{1 - p_e}, \qquad
#    p_e = \pi_t \pi_m + (1 - \pi_t)(1 - \pi_m), $$ (eq-kappa)
#
# the observed agreement $p_o$ (the fraction of reports on which the schemes agree) corrected
# for the agreement $p_e$ expected by chance from the prevalences $\pi_t$ (text) and $\pi_m$
# (MeSH): 0 is chance, 1 perfect. In code (scikit-learn computes eq. {eq}`eq-kappa`):
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
# {glue:text}`worst_kappa_label` ($\kappa$ = {glue:text}`worst_kappa`). Disagreement comes
# from labeler errors and from what each scheme records: a hedged "possible pneumonia" is a
# positive text label under U-Ones but rarely a MeSH code. Where kappa is low, per-label
# results in later chapters deserve caution.
#
# Prevalence under both uncertainty policies:

# %%
three = reports[[f"text:{c}" for c in LABELS]].set_axis(LABELS, axis=1)
pol = pd.DataFrame({p: labels.binarize(three, p).mean()
                    for p in labels.UNCERTAIN_POLICIES})
pol["uncertain mentions"] = (three == labels.UNCERTAIN).sum()
pol.style.format({"positive": "{:.3f}", "negative": "{:.3f}"})

# %% [markdown]
# ## The split
#
# Reports, not images, are split into train / validation / test, so that no report's images
# appear on both sides, with iterative stratification on the 14 labels
# {cite}`sechidis2011stratification` to keep rare labels' proportions similar across splits.
# Only images of the chosen `views` take part. Every later page shows the split's content
# hash in its stamp.

# %%
st = iuxray.split_table(split)
glue("split_hash", study_data.split_hash, display=False)
missing = [(c, s) for c in LABELS for s in st.columns if st.loc[c, s] == 0]
glue("split_missing", ", ".join(f"{c} in {s}" for c, s in missing) or "none",
     display=False)
st

# %% [markdown]
# Split hash: {glue:text}`split_hash`. Label/split pairs with no positive example:
# {glue:text}`split_missing`. Every choice in later chapters is tuned on **val** and applied
# once to **test**.
#
# ## The findings, declared
#
# Before any model is scored, the claims this book tests are declared, each with its
# statistic, the rule its 95% interval must clear, the **margin** by which it must beat its
# negative control, and the control ({mod}`helpers.analysis.findings`). A finding holds when
# its interval clears the rule, its paired difference from the control clears the margin, and
# the control is powered (its own interval's half-width below the margin). Rows of kind `finding`
# are the family over which {doc}`07_results` applies Holm's adjustment; rows of kind
# `validation` check the machinery. Chapter 6's findings stand for one finding per setting:

# %%
glue("n_declared", len(findings.family()), display=False)
findings.styled(findings.registry_table())

# %% [markdown]
# That makes {glue:text}`n_declared` declared findings. Each margin is the smallest effect a
# reader would care about, in the statistic's units; the margins live in code
# (`helpers.analysis.findings.REGISTRY`) and are never tuned on a finding's estimate; where
# one was revised after a run (the column *revised* says when and why), the revision is
# written beside it, and the revised margin is the one every verdict uses.
#
# ## Summary
#
# - The labels come from real report text by stated rules, checked against human MeSH
#   coding; the agreement table says where to trust them.
# - The problem is multi-label and heavily imbalanced, with strong co-occurrences.
# - The study keeps one frontal image per report, chosen by a stated rule.
# - The split is at report level, stratified, seeded and hashed.
#
# ## What's next
#
# {doc}`01b_phantoms` shows the synthetic images the `demo` profile draws from these labels
# and what they can decide; {doc}`02_zero_shot` then asks how well a vision-language model
# recognises the findings without training (zero-shot).
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
top = kappa.loc[lost.index]
rises = top["kappa (negative)"] > top["kappa (positive)"]


def named(index):
    """Label names joined for a sentence, or "none"."""
    return ", ".join(index) or "none"


glue("lost_labels", named(lost.index), display=False)
glue("kappa_rises", named(top.index[rises]), display=False)
glue("kappa_falls", named(top.index[~rises]), display=False)
top.style.format({"positives lost": "{:.0f}", "kappa (positive)": "{:.3f}",
                  "kappa (negative)": "{:.3f}"})

# %% [markdown]
# {glue:text}`lost_labels` lose the most positives. Kappa with MeSH rises under U-Zeros for
# {glue:text}`kappa_rises` (MeSH coders mostly skip their hedged mentions) and falls for
# {glue:text}`kappa_falls` (they code them). Neither policy is "right": the choice changes
# what the targets mean, which is why it is a parameter.
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
# A report's images show the same chest with the same labels. We split images at random,
# 70 / 30, and count test images with a sibling in training:


# %%
def leaked(image_table, seed=0):
    """Test images with a same-report image in train, under a random image split."""
    rng = np.random.default_rng(seed)
    in_train = rng.random(len(image_table)) < 0.7
    train_reports = set(image_table.report_id[in_train])
    test = image_table.report_id[~in_train]
    return int(test.isin(train_reports).sum()), len(test)


for key, image_table in [("all", images), ("frontal", split)]:
    n_leak, n_test = leaked(image_table)
    glue(f"leak_{key}", f"{n_leak} of {n_test} ({n_leak / n_test:.0%})", display=False)
    print(f"{key}: {n_leak} of {n_test} test images have a sibling in train")

# %% [markdown]
# With every image, {glue:text}`leak_all` test images would have their twin (usually the other
# view of the exam) in training, and every test metric would be optimistic. With one frontal
# per report, {glue:text}`leak_frontal` do. The split stays at report level so that no
# choice of `views` can bring the leak back.
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
with_nf = {c: int(co[nf, j]) for j, c in enumerate(LABELS) if j != nf and co[nf, j]}
glue("nf_with", ", ".join(f"{c} ({n} reports)" for c, n in with_nf.items()) or "none",
     display=False)
glue("n_no_positive", int((Y.sum(1) == 0).sum()), display=False)
print("No Finding co-occurs with:", with_nf)
print("reports with no positive label:", int((Y.sum(1) == 0).sum()))

# %% [markdown]
# No Finding co-occurs only with {glue:text}`nf_with`, so it is anti-correlated with the
# other findings: a model can score it well by detecting "anything abnormal". Because
# CheXpert's other findings (granulomas, degenerative changes) also rule it out,
# {glue:text}`n_no_positive` reports carry no positive label at all.
#
# ```{solution-end}
# ```
