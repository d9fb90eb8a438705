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
views = ["frontal"]  # image views in the study: PA, AP, FRONTAL, LATERAL or aliases frontal/all
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
from helpers.data import FRONTAL_VIEWS, load_study_data, split_table
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
# ### Views
#
# The DICOM `View Position` tag is missing for about a third of the images and is known to be
# noisy. We infer what can be inferred, in this order: the pixel-derived frontal/lateral call
# that ships with torchxrayvision, the DICOM tag, the DICOM patient orientation, and finally the
# other image of a two-image report (a frontal + lateral exam). The table shows how many images
# each rule decided.

# %%
vt = pd.crosstab(images.view, images.view_source, margins=True, margins_name="total")
glue("n_unknown_view", int((images.view == "UNKNOWN").sum()), display=False)
n_frontal_per_report = images[images.view.isin(FRONTAL_VIEWS)].groupby("report_id").size()
glue("n_multi_frontal", int((n_frontal_per_report > 1).sum()), display=False)
vt

# %% [markdown]
# {glue:text}`n_unknown_view` images stay `UNKNOWN` and are left out of the frontal study.
# A caveat we cannot remove without pixels: {glue:text}`n_multi_frontal` reports have more than
# one image tagged frontal. Most IU-Xray exams are one frontal and one lateral image, so some
# of those tags are wrong (a lateral image tagged PA); in the `full` profile such images add
# label noise to the frontal set. The `demo` profile renders frontal phantoms for every
# frontal-tagged id, so the issue does not arise there.
#
# ## The labeler
#
# The labeler is rule-based, in the spirit of the CheXpert labeler {cite}`irvin2019chexpert`:
#
# 1. **Mentions.** A spaCy pipeline (`spacy.blank("en")`, a sentencizer and an entity ruler)
#    finds mentions of each observation in FINDINGS + IMPRESSION, from phrase lists
#    ("cardiomegaly", "cardiac enlargement", "pacemaker", "nodule") and token patterns
#    ("heart size is mildly enlarged").
# 2. **Negation.** NegEx {cite}`chapman2001negex` (the `negspacy` implementation, clinical
#    termset adapted to radiology) marks mentions in the scope of "no", "without", "free of",
#    "is not seen", ... as negative.
# 3. **Uncertainty.** A second NegEx pass with a termset of hedges ("cannot exclude",
#    "may represent", "possible", "versus") marks mentions as uncertain. Uncertainty wins over
#    negation: "cannot exclude pneumonia" is uncertain, not negative.
# 4. **Report level.** Per observation: any positive mention gives 1; otherwise any
#    uncertain mention gives $-1$; otherwise any negative mention gives 0; otherwise the
#    observation is not mentioned. *No Finding* is 1 exactly when none of the 12 pathologies
#    is positive or uncertain (Support Devices do not count), CheXpert's rule.
# 5. **Uncertainty policy.** The study needs binary targets. With `uncertain_policy="positive"`
#    (U-Ones, the default) an uncertain observation counts as present; with `"negative"`
#    (U-Zeros) as absent. Not-mentioned is always absent.
#
# A few reports, with each mention highlighted (green: positive, grey struck-through:
# negated, orange: uncertain; hover for the label):

# %%
labeler = L.ReportLabeler()
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
# `Catheters, Indwelling`, `Implanted Medical Device` → Support Devices) and compare, per
# report: prevalence in each scheme, Cohen's kappa $\kappa = (p_o - p_e)/(1 - p_e)$ (observed
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
# sources: labeler errors, and differences of definition (MeSH codes what the radiologist
# named, e.g. "calcified granuloma" is not a CheXpert lung lesion for either scheme, while
# "borderline heart size" is uncertain text and no MeSH code). Where kappa is low, per-label
# results in later chapters deserve caution.
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
# detecting "anything abnormal".
# :::
