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
# # 1b. The `demo` profile's images: phantoms drawn from real labels
#
# ## Overview
#
# **The question.** The `demo` profile keeps IU-Xray's real reports, labels and split
# ({doc}`01_data`) but cannot ship its images, so it draws a synthetic radiograph for every
# selected frontal image from its report's labels. Before any model is scored on them, we
# need to know how these images are made, how far they agree with their labels, and which
# verdicts of later chapters they can decide. (The `full` profile reads the Open-I images
# instead; there this chapter shows what the demo would draw.)
#
# **Objectives.** By the end of this chapter you will be able to
#
# 1. say how a phantom is drawn: real masks and boxes, one drawer and one random stream per
#    finding, two acquisition styles;
# 2. explain how a hedged report changes the image, not only the label;
# 3. use counterfactual phantoms to test whether a score depends on one finding's pixels;
# 4. measure the label noise that makes an image disagree with its label, and the heart-size
#    overlap that bounds any Cardiomegaly classifier;
# 5. decide which findings a small model can resolve, and list what the demo can and cannot
#    show.
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# |---|---|---|
# | {doc}`01_data`: the labeler, uncertain labels, MeSH agreement, the split | Necessary | this chapter draws images from those labels |
# | Python, NumPy arrays and boolean masks | Necessary | every code cell |
# | Images as arrays of grey levels; blur, noise, contrast | Helpful | defined where they are used |
# | AUROC, sensitivity and specificity | Helpful | the {doc}`../glossary`; chapter 2 uses them throughout |
#
# **Time to learn**: 40 minutes.

# %% tags=["parameters"]
profile = "demo"  # demo or full: which inputs; the reports are real in both
uncertain_policy = "positive"  # as chapter 1: uncertain mentions positive or negative
split_seed = 0  # as chapter 1: seed of the report-level split
split_fractions = [0.7, 0.1, 0.2]  # as chapter 1: train, val, test fractions
views = ["frontal"]  # as chapter 1: image views in the study
reports_path = ""  # as chapter 1: report archive; empty uses torchxrayvision's copy
style = "target"  # demo: phantom style of the IU-Xray images (as chapter 2)

# %%
import json
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue
from sklearn.metrics import roc_auc_score, roc_curve

from helpers.book import display
from helpers.book.plots import show_with_mask
from helpers.book.stamp import make_stamp, show_stamp
from helpers.config import get_profile
from helpers.data import iuxray, labels
from helpers.phantoms import drawers, rendering
from helpers.protocols import models

get_profile(profile)
study_data = iuxray.load_study_data(uncertain_policy, split_seed, split_fractions,
                                    views, reports_path)
table, split = study_data.table, study_data.split
reports = table.reports
LABELS = list(labels.CHEXPERT_LABELS)
show_stamp(make_stamp(profile, "none (data chapter)", study_data.split_hash,
                      label_table_hash=table.hash))

# %% [markdown]
# ## Phantoms drawn from real labels
#
# Every selected frontal image (one per report, {doc}`01_data`, § Views) gets a
# {term}`phantom` drawn from its report's real labels. The anatomy is grounded in real
# annotations shipped with torchxrayvision: lung fields from radiologist-drawn lung masks,
# each finding's position and size from radiologists' boxes for that class (NIH ChestX-ray14
# {cite}`wang2017chestxray8`; VinDr-CXR for consolidation, pleural thickening and mediastinal
# widening). Each finding is drawn with its exact pixel mask, chapter 6's ground truth for
# Grad-CAM. The study renders {glue:text}`n_phantoms` phantoms in the
# {glue:text}`phantom_style` style.
#
# Two acquisition *styles* give the distribution shift the study is about: `source` (crisp,
# high contrast: the demo model's pretraining corpus) and `target` (brighter, lower contrast,
# grainier, blurrier, tilted and shifted: the demo's IU-Xray images). Their parameters:

# %%
glue("n_phantoms", len(split), display=False)
glue("phantom_style", style, display=False)
styles = rendering.style_table()
glue("subtle_target", f"{styles.loc['target', 'subtle_fraction']:.0%}", display=False)
glue("subtle_source", f"{styles.loc['source', 'subtle_fraction']:.0%}", display=False)
styles.T.rename_axis(index="parameter", columns="style")

# %% [markdown]
# The last row is the share of findings drawn *subtle*: {glue:text}`subtle_target` in
# `target`, {glue:text}`subtle_source` in `source` (standing in for the textbook-clear figures
# BiomedCLIP was pretrained on).
#
# ## One drawer per finding, and which ones share code
#
# Each finding has its own drawer and its own random stream (from the image's seed and the
# finding's name); a drawer reads the patient's anatomy and its own stream, never another
# finding. Some drawers share code and differ only in parameters:

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
# {glue:text}`shared_families`. Within a family a model can tell findings apart only by what
# the parameters change (box source, size, density, contrast sign, air bronchograms, Kerley
# lines), so a per-label score inside a family is partly a family score. Chapter 3 shows
# these families beside its counterfactual co-occurrence test.
#
# ## Every finding at full strength, and hedged
#
# A finding's *conspicuity* $c \in (0, 1]$ scales its contrast (for Cardiomegaly, how far the
# heart grows), drawn from the finding's own stream:
#
# $$ c = c_0 \cdot h^{[\text{label} = -1]}, \qquad
#    c_0 \sim \begin{cases} U(\text{subtle range}) & \text{with probability } f \\
#                           U(\text{clear range}) & \text{otherwise,} \end{cases} $$ (eq-conspicuity)
#
# with $f$ the style's subtle fraction and $h$ = `rendering.HEDGE_FACTOR`
# ({glue:text}`hedge_factor`) for a finding the report mentions with uncertainty (label
# $-1$); Cardiomegaly and Support Devices always have $c_0 = 1$. The renderer reads the
# three-valued labels, never the binarised ones, so the uncertainty policy changes labels,
# never a pixel.
#
# Below, one patient with each finding at full strength ($c = 1$) beside the same finding
# hedged ($c = h$); red: the finding's exact mask. The last pair is the same normal patient in
# both styles.

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
# Without the override, the renderer applies the hedge itself; we compare the conspicuity it
# draws for an uncertain and for a positive label from the same stream:

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
# ## Counterfactual phantoms: one finding toggled, nothing else changed
#
# Because every finding draws from its own stream and changes pixels only inside its
# support, an image can be re-rendered with one finding forced present and forced absent
# (`rendering.render_counterfactual`). A finding's mask is every output pixel that can depend
# on it (its support, widened by the blur and carried through the positioning warp), so the
# two images must be identical outside it. Here the first test image whose report names
# Cardiomegaly and a pleural effusion, {glue:text}`cf_image`, rendered as the study renders
# it (with the label noise of § Label noise), with Pleural Effusion toggled:

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
# by that finding's pixels alone. Chapter 3 uses this to test whether a probe's score for one
# finding moves when another is added.
#
# ## Label noise: the images do not simply repeat the labels
#
# If exactly the labelled findings were drawn, the text labels would be perfect by
# construction. Real labels are not: chapter 1 (§ How trustworthy are the labels?) showed the
# labeler and the MeSH coders disagreeing. The renderer turns that disagreement into label
# noise, taking MeSH as the image's truth. For each finding $j$, over the reports,
#
# $$ m^{+}_j = P(\text{MeSH}_j = 0 \mid \text{text}_j = 1), \quad
#    m^{?}_j = P(\text{MeSH}_j = 0 \mid \text{text}_j = -1), \quad
#    e_j = P(\text{MeSH}_j = 1 \mid \text{text}_j \in \{0, \text{not mentioned}\}), $$ (eq-noise)
#
# and a positive finding is left out with probability $m^{+}_j$, an uncertain one with
# $m^{?}_j$, and an unlabelled one is drawn with probability $e_j$. In code:
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
# What those rates do to the study's {glue:text}`n_phantoms` images, per finding (labels
# binarised with the {glue:text}`policy` policy); the same pass records each image's
# cardiothoracic ratio for the next section.

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
# draws it in {glue:text}`top_extra_n` images labelled absent. Altogether
# {glue:text}`n_not_drawn` of the {glue:text}`n_pos_labels` positive labels have no finding in
# their image, and {glue:text}`n_unlabelled_drawn` findings are drawn without a label.
# Uncertain mentions are missed far more often: MeSH rarely codes a hedge. Some rates rest on
# under 30 reports (positive: {glue:text}`small_positive`; uncertain:
# {glue:text}`small_uncertain`). Taking MeSH as the truth is an **upper-end assumption**: MeSH
# also misses findings, so the demo's images probably contradict their labels more often than
# real films do.
#
# ## Cardiomegaly: overlapping cardiothoracic ratios
#
# Radiologists call a heart enlarged when the {term}`cardiothoracic ratio` (CTR: heart width
# over thoracic width) is large, classically above 0.5 on a PA film {cite}`danzer1919ctr`,
# but normal and enlarged ratios overlap, and so do the phantoms'. Each patient has one
# standard-normal draw $z$ that places them in both distributions, and the heart grows from
# the normal ratio towards the enlarged one by the conspicuity $c$ (0 without Cardiomegaly):
#
# $$ \text{CTR} = \mu_n + \sigma_n z
#    + c\,\big[(\mu_c + \sigma_c z) - (\mu_n + \sigma_n z)\big], $$ (eq-ctr)
#
# with $(\mu_n, \sigma_n)$ = ({glue:text}`ctr_n`) (`CTR_NORMAL`) and $(\mu_c, \sigma_c)$ =
# ({glue:text}`ctr_c`) (`CTR_CARDIOMEGALY`), $z$ clipped to $\pm 3$.
#
# In code:
#
# ```{literalinclude} ../../helpers/phantoms/drawers.py
# :pyobject: draw_cardiomegaly
# ```
#
# The CTR drawn for each of the study's images, by its Cardiomegaly label:

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
# at or below it (hedged ones are drawn part-way, a few are dropped by label noise). A scorer
# reading the drawn CTR exactly would reach an AUROC of {glue:text}`ctr_auroc`: demo AUROCs for
# Cardiomegaly should be read against that, not against 1.
#
# ## Resolvability: can the model see each finding at all?
#
# The demo model reads a {glue:text}`input_px`-pixel image cut into
# {glue:text}`patch_px`-pixel patches; a finding smaller than a patch, or fainter than the
# noise, may be invisible to it whatever it learns. `rendering.resolvability` renders each
# finding alone, with and without it, at the model's input size and measures the mask's area
# and the contrast-to-noise ratio (CNR: the 95th percentile of the difference inside the mask
# over the noise's standard deviation).

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
# {glue:text}`borderline`. A demo model that misses a failing finding tells us nothing about
# the method: the information is gone before the first layer.
#
# ## What the demo can and cannot show
#
# **It can show** that the study's code runs end to end through the same calls as the real
# study; how the *real* labels' imbalance and co-occurrences shape a classifier; what a style
# shift between pretraining and target images does to zero-shot scores; whether a score for a
# finding depends on that finding's pixels (counterfactual pairs); and where saliency falls
# relative to an exact lesion mask.
#
# **It cannot decide**
#
# - anything about BiomedCLIP: the demo model is a small proxy of its architecture,
#   pretrained on synthetic figure-caption pairs (see {doc}`../demo_profile`);
# - whether image features of one finding help recognise another: findings are drawn
#   independently, so co-occurrence reaches the images only through the labels;
# - whether a model distinguishes findings that share drawing code
#   ({glue:text}`shared_families`) the way a radiologist does;
# - per-label verdicts for findings below the resolution limit
#   ({glue:text}`not_resolvable_names`): a miss there may be the input size, not the model;
# - how good the real labels are: label noise is MeSH disagreement taken as truth, an
#   upper-end assumption ({glue:text}`n_not_drawn` positive labels without a finding);
# - how hard real findings are: conspicuity, subtlety and the CTR overlap are choices in
#   `helpers/phantoms/rendering.py`, grounded in real boxes and masks but not measured on
#   IU-Xray's films.

# %% [markdown]
# ## Summary
#
# - Each `demo` image is a phantom drawn from its report's real three-valued labels, with an
#   exact mask per finding; two styles give the distribution shift.
# - A hedged mention is drawn at {glue:text}`hedge_factor` times the conspicuity; the
#   uncertainty policy changes labels, never a pixel.
# - Counterfactual phantoms differ only inside the toggled finding's mask.
# - Label noise leaves {glue:text}`n_not_drawn` of {glue:text}`n_pos_labels` positive labels
#   without a finding; a perfect reader of heart size reaches AUROC {glue:text}`ctr_auroc`.
# - Nothing here decides anything about BiomedCLIP, about visual interactions between
#   findings, or about findings below the model's resolution.
#
# ## What's next
#
# {doc}`02_zero_shot` asks how well a vision-language model recognises these findings
# without training (zero-shot).
#
# ## Exercises
#
# ```{exercise}
# :label: ex-phantoms-danzer
#
# Use the classical rule "CTR above 0.5 means cardiomegaly" as a classifier of the demo's
# Cardiomegaly labels. What are its sensitivity and specificity, and which threshold on the
# drawn CTR would maximise Youden's $J$ (sensitivity + specificity − 1)?
# ```
#
# ```{solution-start} ex-phantoms-danzer
# :class: dropdown
# ```
#
# We read the drawn CTR of every image (§ Cardiomegaly) as a score:

# %%
rule = ctr > 0.5
rule_sens, rule_spec = rule[is_pos].mean(), (~rule[~is_pos]).mean()
fpr, tpr, thr = roc_curve(is_pos, ctr)
best = np.argmax(tpr - fpr)
glue("danzer_sens", f"{rule_sens:.3f}", display=False)
glue("danzer_spec", f"{rule_spec:.3f}", display=False)
glue("youden_thr", f"{thr[best]:.3f}", display=False)
glue("youden_sens", f"{tpr[best]:.3f}", display=False)
glue("youden_spec", f"{1 - fpr[best]:.3f}", display=False)
glue("youden_j", f"{tpr[best] - fpr[best]:.3f}", display=False)
print(f"CTR > 0.5: sensitivity {rule_sens:.3f}, specificity {rule_spec:.3f}")
print(f"best threshold {thr[best]:.3f}: sensitivity {tpr[best]:.3f}, "
      f"specificity {1 - fpr[best]:.3f}")

# %% [markdown]
# The rule CTR > 0.5 has sensitivity {glue:text}`danzer_sens` and specificity
# {glue:text}`danzer_spec`. The threshold that maximises $J$ is {glue:text}`youden_thr`,
# with sensitivity {glue:text}`youden_sens` and specificity {glue:text}`youden_spec`
# ($J$ = {glue:text}`youden_j`). The two CTR distributions share {glue:text}`ctr_overlap`
# of their area, so no threshold separates them; moving the threshold lowers one error rate
# only by raising the other.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-phantoms-policy
#
# The renderer reads the three-valued labels, so the uncertainty policy never changes a
# pixel. Over the study's images, how many (image, finding) pairs are labelled uncertain, in
# how many of them is the finding drawn, and how many labels then contradict their image
# under U-Ones and under U-Zeros?
# ```
#
# ```{solution-start} ex-phantoms-policy
# :class: dropdown
# ```
#
# We compare each uncertain label with what the renderer drew (the `drawn` table of
# § Label noise):

# %%
uncertain = pd.DataFrame({lab: split[f"text:{lab}"].to_numpy() == labels.UNCERTAIN
                          for lab in finding_names})
by_finding = pd.DataFrame({"uncertain": uncertain.sum(),
                           "drawn": (uncertain & drawn).sum()})
by_finding["not drawn"] = by_finding["uncertain"] - by_finding["drawn"]
n_unc, n_unc_drawn = int(by_finding["uncertain"].sum()), int(by_finding["drawn"].sum())
contradict = {"U-Ones": n_unc - n_unc_drawn, "U-Zeros": n_unc_drawn}
glue("n_unc_pairs", n_unc, display=False)
glue("n_unc_drawn", n_unc_drawn, display=False)
glue("contra_ones", contradict["U-Ones"], display=False)
glue("contra_zeros", contradict["U-Zeros"], display=False)
glue("fewer_contra", min(contradict, key=contradict.get), display=False)
by_finding[by_finding["uncertain"] > 0].sort_values("uncertain", ascending=False)

# %% [markdown]
# Of the {glue:text}`n_unc_pairs` uncertain (image, finding) pairs, the finding is drawn
# (at the hedged conspicuity) in {glue:text}`n_unc_drawn`. Under U-Ones every uncertain label
# is positive, so the {glue:text}`contra_ones` pairs without a drawn finding are labels the
# image contradicts; under U-Zeros every uncertain label is negative, so the
# {glue:text}`contra_zeros` drawn findings are. On these images {glue:text}`fewer_contra`
# leaves fewer labels contradicting their image; since the miss rates are the demo's MeSH
# assumption, that says which policy fits the phantoms, not which fits IU-Xray.
#
# ```{solution-end}
# ```
