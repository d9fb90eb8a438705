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
# # 6. Where does the model look? Attribution maps scored against the truth
#
# ## Overview
#
# **The question.** The original study {cite}`sadman2025interpreting` judges Grad-CAM maps
# by eye. A score of "points at the finding" means something only if we know what it gives
# when nothing localises (a map that never looks at the image) and when something certainly
# does (a model told where the findings are). This chapter builds both ends, then scores
# every setting with seven methods, block by block and pathology by pathology. Whether the
# maps depend on what the models learned is the next page's question ({doc}`06b_sanity`).
#
# **Objectives.** By the end of this chapter you will be able to
#
# 1. score a map against a region by hit rate (the pointing game) and mIoU, each beside its
#    chance level, and validate the scoring with maps whose scores are known;
# 2. handle ties and constant maps so that no map scores by array order (§ Method);
# 3. build a positive control whose evidence is local by construction (§ The positive
#    control);
# 4. compute seven attribution methods for a ViT, attention rollout and Chefer et al.'s
#    included (§ Seven methods, five settings);
# 5. read localisation per pathology and block by block.
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# |---|---|---|
# | {doc}`02_zero_shot`, {doc}`03_linear_probe`, {doc}`04_fine_tune` | Necessary | the models explained here |
# | {term}`Grad-CAM`, {term}`Hit rate`, {term}`mIoU` | Necessary | {doc}`../glossary` |
# | Self-attention in a vision transformer | Helpful | tokens, heads, the CLS token |
# | Bootstrap confidence intervals | Helpful | every number carries a 95% CI |
#
# **Time to learn**: 45 minutes.
#
# ## Method
#
# **Settings.** Every setting is a differentiable score $s_j(x)$ of label $j$ through the
# ViT image encoder (the *tower*, which reads out its CLS token), so one set of methods explains them all: zero-shot with chapter 2's
# validated classifier ($\cos(u, v_j^+) - \cos(u, v_j^-)$), zero-shot with the original
# study's positive prompt alone ($\cos(u, v_j^+)$), the probe's logit, the fine-tuned
# model's logit, and a positive control (§ The positive control).
#
# **Methods.** Grad-CAM {cite}`selvaraju2017gradcam` weights the activations $A^c$ of a
# block's patch-token grid ($g \times g$, CLS dropped) by the spatially averaged gradient,
#
# $$ M = \mathrm{ReLU}\Big(\sum_c \alpha_c A^c\Big), \qquad
#    \alpha_c = \frac{1}{g^2}\sum_{u,v} \frac{\partial s}{\partial A^c_{uv}} ; $$ (eq-gradcam)
#
# Grad-CAM++ {cite}`chattopadhay2018gradcampp`, LayerCAM {cite}`jiang2021layercam` and
# ScoreCAM {cite}`wang2020scorecam` change the weights; EigenCAM
# {cite}`muhammad2020eigencam` takes the first principal component and ignores the label.
# All five run through pytorch-grad-cam on the last layer whose patch tokens reach the
# score ({func}`helpers.saliency.attribution.default_layer`: the last block's input for a
# CLS-pooled tower, the final norm for the positive control). Attention rollout
# {cite}`abnar2020quantifying` multiplies head-averaged attention $\bar A_b$ of every block
# $b$ with the residual path,
#
# $$ R = \prod_{b} \tfrac{1}{2}\big(\bar A_b + I\big), \qquad
#    \bar A_b = \mathrm{mean}_h A_b , $$ (eq-rollout)
#
# ```{literalinclude} ../../helpers/saliency/attribution.py
# :pyobject: rollout
# ```
#
# and Chefer et al.'s gradient-weighted attention {cite}`chefer2021generic` keeps only the
# attention that raises the score,
#
# $$ R \leftarrow R + \mathrm{mean}_h\big[(\nabla_{A_b} s \odot A_b)^+\big]\, R ,
#    \qquad R_0 = I ; $$ (eq-chefer)
#
# ```{literalinclude} ../../helpers/saliency/attribution.py
# :pyobject: chefer
# ```
#
# the map is the CLS token's row of $R$ over the patches. Rollout and EigenCAM give every
# label of an image the same map. All one-pass methods share one forward and backward pass;
# ScoreCAM needs a forward per channel and runs on {glue:text}`scorecam_pairs_glue` pairs.
#
# **Scores.** For a map $M$ (scaled to $[0, 1]$) and true region $G$, the **hit rate**
# (CheXlocalize's name {cite}`saporta2022chexlocalize` for the pointing game
# {cite}`zhang2018topdown`) asks whether the map's maximum lies in $G$. Where several pixels
# tie for the maximum, the hit is the share of them inside $G$, so a **degenerate** map
# (constant, or not finite) scores exactly its **chance level**, the region's area fraction:
#
# $$ \mathrm{hit}(M, G) = \frac{|P \cap G|}{|P|}, \quad
#    P = \{p : M_p \ge \max M - \epsilon\}, \qquad
#    \mathrm{chance}(G) = \frac{|G|}{S^2} . $$ (eq-hit)
#
# ```{literalinclude} ../../helpers/saliency/regions.py
# :pyobject: pointing_game
# ```
#
# Here $S$ is the image side in pixels and $\epsilon$ a small tolerance for ties.
# **mIoU** is the mean IoU of the segmentation $\{M > t\}$ with $G$, with $t$ tuned per
# pathology on validation pairs from CheXlocalize's grid $0.2, 0.3, \dots, 0.7$ (pooled over
# pathologies below {glue:text}`min_tune_pairs` pairs, Otsu's threshold below that again;
# the scored image's own report never tunes it):
#
# ```{literalinclude} ../../helpers/saliency/regions.py
# :pyobject: iou
# ```
#
# **IoU@0.1** is the share of pairs with IoU of at least 0.1 {cite}`wang2017chestxray8`.
# Every CI resamples reports ({glue:text}`n_boot_glue` times).
#

# %% tags=["parameters"]
profile = "demo"  # demo or full
model = ""  # model spec; empty uses the profile's (tiny or biomedclip)
image_dir = ""  # full only: folder of Open-I PNGs; empty uses data/openi/images
style = "target"  # demo only: phantom style of the IU-Xray images
uncertain_policy = "positive"  # as chapter 1: uncertain mentions positive or negative
split_seed = 0  # as chapter 1: seed of the report-level split
split_fractions = [0.7, 0.1, 0.2]  # as chapter 1: train, val, test fractions
views = ["frontal"]  # as chapter 1: image views in the study
reports_path = ""  # as chapter 1: report archive; empty uses torchxrayvision's copy
limit = 0  # at most this many images per split (0: all); for quick runs
on_error = "stop"  # an unreadable image: "stop" (naming it) or "skip" (counted)
n_boot = 200  # bootstrap resamples (by report) for confidence intervals
max_pairs = 200  # at most this many (image, label) pairs per split (0: all)
scorecam_pairs = 12  # ScoreCAM (a forward per channel) on this many scored pairs
n_examples = 4  # example figures
annotations = ""  # full profile: annotation CSV (empty: the shipped example)
k_folds = 5  # full: folds of probes for annotated training images
control_epochs = 30  # positive control: training epochs
control_images = 1200  # positive control: at most this many training images

# %%
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue

from helpers.analysis import findings
from helpers.analysis.estimate import Estimate
from helpers.book import display
from helpers.book.stamp import show_stamp
from helpers.book.study import load_study
from helpers.saliency import attribution, positive_control, regions, sanity, settings

study = load_study(profile, model, image_dir=image_dir, style=style,
                   uncertain_policy=uncertain_policy, split_seed=split_seed,
                   split_fractions=split_fractions, views=views,
                   reports_path=reports_path, limit=limit, on_error=on_error)
arts = study.artefacts
stamp = study.stamp()
show_stamp(stamp)
for name, value in (("n_boot_glue", n_boot), ("scorecam_pairs_glue", scorecam_pairs),
                    ("min_tune_pairs", regions.MIN_TUNE_PAIRS)):
    glue(name, value, display=False)
CHAPTER = "06_grad_cam"

# %% [markdown]
# ## Pairs, and which model may score them
#
# A pair is an image and one of its findings with a known region: the phantoms' exact masks
# in `demo`, the annotation file's regions in `full`. Validation pairs tune the thresholds;
# in `demo` every setting is scored on the same test pairs. In `full`, where annotations are
# few, every annotated image is scored, a training image by a probe fitted without its
# report ({func}`helpers.saliency.explain.holdout_probes`) and never by a fine-tuned model
# that trained on it. {func}`helpers.saliency.settings.build` loads every setting with its
# pairs.

# %% tags=["nbval-ignore-output"]
control_config = positive_control.ControlConfig(epochs=control_epochs,
                                                max_images=control_images)
cs = settings.build(study, max_pairs, annotations, control_config, k_folds)
glue("n_test_pairs", len(cs.base), display=False)
glue("n_val_pairs", len(cs.tune), display=False)
glue("zs_name", cs.zs_name, display=False)
settings.pairs_table(cs)

# %% [markdown]
# ## A first look
#
# Before any score: test pairs with their true region outlined, and the Grad-CAM and Chefer
# maps of the fine-tuned model and of the positive control (drawn on the marked image it
# saw).

# %%
example_pairs = settings.subsample(cs.scored["ft"], n_examples)
shown = [(key, m) for key in ("ft", "control") if key in cs.scorers
         for m in ("gradcam", "chefer")]
example_maps = {key: cs.explain(key, example_pairs, ("gradcam", "chefer"),
                                keep=range(len(example_pairs)))
                for key in dict.fromkeys(k for k, _ in shown)}

# %% tags=["hide-input"]
n_rows = max(1, len(example_pairs))
fig, axes = plt.subplots(n_rows, 1 + len(shown), figsize=(6.8, 0.5 + 1.75 * n_rows),
                         squeeze=False)
for r, (pair_row, label) in enumerate(zip(example_pairs.table.row,
                                          example_pairs.table.label)):
    image = np.asarray(study.pixels.pixels[pair_row])
    axes[r, 0].imshow(image, cmap="gray")
    axes[r, 0].contour(example_pairs.masks[r], levels=[0.5], colors="#1b9e77",
                       linewidths=1)
    axes[r, 0].set_title(textwrap.fill(label, 16), fontsize=9)
    for c, (key, m) in enumerate(shown, start=1):
        seen = cs.pixels[key].pixels[pair_row] if key in cs.pixels else image
        explained = example_maps[key]
        axes[r, c].imshow(seen, cmap="gray")
        axes[r, c].imshow(explained.kept[m][r], cmap="inferno", alpha=0.5, vmin=0,
                          vmax=1)
        axes[r, c].contour(example_pairs.masks[r], levels=[0.5], colors="white",
                           linewidths=0.8)
        head = f"{cs.names[key]}\n{attribution.NAMES[m]}\n" if r == 0 else ""
        hit = explained.stats[m]["hit"][r]
        axes[r, c].set_title(f"{head}hit {hit:.2f}", fontsize=9)
for ax in axes.ravel():
    ax.set_axis_off()
fig.tight_layout()
glue("fig_examples", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_examples
# :name: fig-cam-examples
#
# Test pairs: the image with its true region (left), then maps of the fine-tuned model and
# of the positive control (colour map *inferno*: dark low, bright high; white outline: the
# true region), each with its hit (1: the map's maximum lies in the region).
# ```
#
# One map tells us little: it can land on a finding by luck, or because findings of its kind
# usually sit there. The rest of this page measures both.
#
# %% [markdown]
# ## Validating the scoring
#
# Before any model: maps whose scores we know. The **oracle** is the true region blurred (it
# must hit); a **uniform** map scores exactly the chance level; a **random** map should
# score it on average; a **random grid** map is random values on the tower's patch grid,
# upsampled as every attribution map is; a **centre** map points at the middle. The
# **location prior** (`demo` only: per label, the mean of its training regions) is the
# fixed guess a model's maps should beat.

# %%
references = settings.reference_summaries(cs, n_boot)
for name in ("oracle", "uniform", "random", "centre", "random grid"):
    r = references[name]
    glue(f"ref_{name.replace(' ', '_')}", Estimate.read(r, "hit_rate").format(),
         display=False)
uniform, random_grid = references["uniform"], references["random grid"]
glue("ref_chance", Estimate.read(uniform, "chance").format(), display=False)
glue("ref_grid_chance", Estimate.read(random_grid, "chance").format(), display=False)
glue("grid_side", cs.grid, display=False)
grid_ratio = (Estimate.read(random_grid, "chance").number
              / Estimate.read(uniform, "chance").number)
glue("grid_ratio", f"{grid_ratio:.2f}", display=False)
grid_check = settings.grid_chance_check(cs, n_boot)
glue("grid_check", settings.grid_check_text(grid_check), display=False)
settings.summary_table(references)

# %% [markdown]
# The oracle scores {glue:text}`ref_oracle`, the uniform map {glue:text}`ref_uniform` and the
# random map {glue:text}`ref_random`, against a chance level of {glue:text}`ref_chance`
# (whether that validates the scoring is decided in § The record).
#
# **The chance level of a coarse map.** An attribution map is computed on the
# {glue:text}`grid_side` × {glue:text}`grid_side` patch grid and upsampled, so it peaks
# near a cell centre, never uniformly over pixels. Its chance level is the expected hit of
# random grid values upsampled the same way, by Monte Carlo
# ({func}`helpers.saliency.regions.grid_chance`): {glue:text}`ref_grid_chance` here,
# {glue:text}`grid_ratio` times the area fraction. One random grid map per pair scores
# {glue:text}`ref_random_grid`; many draws check the level: {glue:text}`grid_check`. Every
# "hit − chance" below uses this level. The centre map scores {glue:text}`ref_centre`.
#
# ## The positive control
#
# To show that the methods *can* report localisation, we need a model whose evidence is
# certainly local ({mod}`helpers.saliency.positive_control`). **The data**: each finding is
# *marked* inside its region by a faint grating whose orientation names it, so its evidence
# lies there and nowhere else. **The model**: the study model's tower with a patch-level
# head, one logit $z_{pj}$ per patch and label, and the image's logit their smooth maximum
# (log-mean-exp with sharpness $r$),
#
# $$ z_j = \frac{1}{r} \log \frac{1}{P} \sum_{p=1}^{P} e^{r z_{pj}} , $$ (eq-lse)
#
# ```{literalinclude} ../../helpers/saliency/positive_control.py
# :pyobject: LocalisingNet.pool
# ```
#
# trained with the image labels *and* the regions as patch targets (its last block, final
# norm and head; the earlier blocks stay the study model's). It was told where the findings
# are and shown them marked, so its maps localising is no result about the study's models:
# it is the known-positive case that shows what the scores look like when localisation
# exists. Its weights are cached, so the book trains it once.

# %% tags=["nbval-ignore-output"]
if cs.control is not None:
    record = cs.control.record
    print(f"positive control: {record['n_images']} training images, "
          f"{control_config.epochs} epochs, key {record['key']}, "
          + ("loaded from its cache" if record["cached"] else
             f"trained now in {record['train_s']:.0f} s"))
else:
    print("no training regions in this profile: the positive control runs in demo only")

# %% [markdown]
# ## Seven methods, five settings
#
# Every setting, explained by every method on the same pairs
# ({func}`helpers.saliency.settings.explain_every_setting`): hit rate beside its grid chance
# level, mIoU, IoU@0.1 and degenerate maps. ScoreCAM rows use a subset of
# {glue:text}`scorecam_pairs_glue` pairs (their own chance level) and Otsu's thresholds. The
# last rows are the model fine-tuned on permuted labels, a control of {doc}`06b_sanity`.

# %% tags=["nbval-ignore-output"]
every = settings.explain_every_setting(cs, n_boot, scorecam_pairs)

# %%
degenerate = {f"{cs.names[k]} · {attribution.NAMES[m]}": r["n_degenerate"]
              for (k, m), r in every.methods.items() if r["n_degenerate"]}
glue("n_degenerate_total", sum(degenerate.values()), display=False)
glue("degenerate_where", "; ".join(f"{k}: {v}" for k, v in degenerate.items())
     or "none", display=False)
MIN_PAIRS_BELOW = 20  # 0 hits of 12 (ScoreCAM's subset) is no evidence of pointing away
below = [f"{cs.names[k]} · {attribution.NAMES[m]} ({r['hit_rate']:.3f} against "
         f"{r['chance']:.3f})" for (k, m), r in every.methods.items()
         if Estimate.read(r, "hit_minus_chance").below(0)
         and r["n_pairs"] >= MIN_PAIRS_BELOW]
glue("below_chance", "; ".join(below) if below else "none", display=False)
glue("min_pairs_below", MIN_PAIRS_BELOW, display=False)
glue("n_method_rows", len(every.methods), display=False)
settings.method_table(cs, every)

# %% [markdown]
# Degenerate maps, {glue:text}`n_degenerate_total` in total, each scored at its chance
# level: {glue:text}`degenerate_where`. EigenCAM and attention rollout ignore the head, so
# the settings that share the frozen tower (zero-shot, probe) share their maps and rows. Maps that peak *outside* the findings more often than
# chance (the whole interval of hit − chance below 0, on at least
# {glue:text}`min_pairs_below` pairs; {glue:text}`n_method_rows` rows read without a
# multiplicity correction, so one or two are expected by chance): {glue:text}`below_chance`.
#
#
# **Conventions, checked.** CheXlocalize's own code takes the *first* maximum in row-major
# order and averages IoU only where both masks are non-empty
# ({func}`helpers.saliency.regions.literal_hit`, tested against their code). Grad-CAM, both
# ways:

# %%
settings.convention_table(cs, every)

# %% [markdown]
# Where a metric's two columns agree, the verdicts of {doc}`06b_sanity` do not depend on the
# convention; where they differ, ties or empty segmentations make the difference.

# %% tags=["hide-input"]
methods_shown = [m for m in attribution.METHODS
                 if any(done == m for _, done in every.methods)]
width = 0.8 / max(1, len(cs.scorers))
fig, ax = plt.subplots(figsize=(6.8, 4.4))
for i, key in enumerate(cs.scorers):
    bars = [(j, every.methods[(key, m)]) for j, m in enumerate(methods_shown)
            if (key, m) in every.methods]
    x = [j + (i - (len(cs.scorers) - 1) / 2) * width for j, _ in bars]
    gains = [Estimate.read(r, "hit_minus_chance") for _, r in bars]
    ax.bar(x, [e.number for e in gains], width,
           yerr=np.array([e.error_bar() for e in gains]).reshape(-1, 2).T,
           capsize=2, label=cs.names[key])
if "location prior" in references:  # on the bars' baseline, the grid chance level
    prior_hit = Estimate.read(references["location prior"], "hit_rate").number
    ax.axhline(prior_hit - Estimate.read(random_grid, "chance").number,
               color="k", ls="--", lw=1, label="location prior")
ax.axhline(0, color="grey", lw=0.8)
ax.set_xticks(range(len(methods_shown)), [attribution.NAMES[m] for m in methods_shown],
              rotation=20)
ax.set_ylabel("hit rate − chance level\n(test pairs)")
ax.legend(fontsize=9, ncol=2)
fig.tight_layout()
glue("fig_methods", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_methods
# :name: fig-methods
#
# Hit rate minus its chance level for every setting and method, with 95% CIs; the dashed
# line is the location prior's hit rate minus the same grid chance level. A bar above the line localises better than knowing where
# findings usually are.
# ```
#
# ## Per pathology
#
# CheXlocalize reports every pathology separately. Grad-CAM, every setting:

# %% tags=["hide-output"]
settings.per_pathology_table(cs, every, references)

# %% [markdown]
# Small findings have a small chance level and are hard to hit; a hit on a large one (an
# enlarged heart) means less. Read each row against its own chance level; rows of a few
# pairs say little.
#
# ## Layer by layer
#
# Grad-CAM at every layer position (each block's `norm1` input, then the final norm). For a
# CLS-pooled tower only the CLS token reaches the score at the final norm, so every map
# there is degenerate; the control pools its patches and is read there.

# %% tags=["hide-input"]
positions = attribution.layer_positions(cs.scorers["zs"])
fig, ax = plt.subplots(figsize=(6.8, 3.8))
for key in cs.cascade_keys():
    by_layer = [every.layers[(key, b)] for b in range(len(positions))]
    hit = [Estimate.read(r, "hit_rate") for r in by_layer]
    ax.errorbar(np.arange(len(positions)), [e.number for e in hit],
                yerr=np.array([e.error_bar() for e in hit]).T,
                marker="o", capsize=3, label=cs.names[key])
ax.axhline(Estimate.read(random_grid, "chance").number, color="grey", ls=":",
           label="chance level (grid)")
if "location prior" in references:
    ax.axhline(Estimate.read(references["location prior"], "hit_rate").number,
               color="k", ls="--", lw=1, label="location prior")
ax.set_xticks(range(len(positions)), positions)
ax.set_xlabel("Grad-CAM target layer (a block's norm1 input, or the final norm)")
ax.set_ylabel("hit rate (test pairs)")
ax.legend(fontsize=9)
fig.tight_layout()
glue("fig_layers", fig, display=False)
plt.close(fig)
def best_layer(key):
    hits = [Estimate.read(every.layers[(key, b)], "hit_rate").number
            for b in range(len(positions))]
    return (positions[int(np.nanargmax(hits))] if np.isfinite(hits).any()
            else "no scored pair")


best = {cs.names[k]: best_layer(k) for k in cs.cascade_keys()}
glue("best_layers", "; ".join(f"{name} at {layer}" for name, layer in best.items()),
     display=False)

# %% [markdown]
# ```{glue:figure} fig_layers
# :name: fig-layers
#
# Grad-CAM hit rate at every layer position, with 95% CIs, against the chance level and the
# location prior.
# ```
#
# Where the maps hit most often: {glue:text}`best_layers`. A map that hits most often at
# the first block points at image structure, not at what the model made of it. Every
# block's row is in the table below.

# %% tags=["hide-output"]
settings.layer_table(cs, every)

# %% [markdown]
# ## The human reference
#
# Where an annotation file names several readers, their agreement is the human reference
# (CheXlocalize's benchmark): the IoU of two readers' regions, and whether one reader's most
# interior point lies in the other's region.

# %%
human = settings.human_reference(cs, n_boot)
glue("human_ref", "no annotation file with several readers in this run" if human is None
     else f"readers' hit rate {human['hit']}, inter-reader mIoU "
          f"{human['iou']} over {human['n']} pairs", display=False)

# %% [markdown]
# Human reference: {glue:text}`human_ref`.
#
# ## The record
#
# This page decides one check, the scoring: the oracle's hit minus its chance level must
# clear the declared margin against the same difference for random grid maps. The findings
# about the models are decided on {doc}`the next page <06b_sanity>`, which reads the
# per-pair hits written here.

# %%
oracle = references["oracle"]["per_pair"]
random_grid_pp = references["random grid"]["per_pair"]
scoring = findings.record(
    "scoring validated", CHAPTER, "the oracle map (blurred true region) hits above the "
    "chance level", sanity.versus(oracle["hit_rate"], oracle["chance"],
                                  random_grid_pp["hit_rate"], random_grid_pp["chance"],
                                  cs.base, n_boot),
    {"above": 0.0}, "a random grid map's hit minus its chance level", n=len(cs.base))
glue("v_scoring", sanity.verdict_text([scoring], "scoring validated"), display=False)
params = {"model": study.info.spec, "style": style, "limit": limit, "n_boot": n_boot,
          "max_pairs": max_pairs, "scorecam_pairs": scorecam_pairs,
          "zero_shot_classifier": cs.zs_name, "k_folds": k_folds,
          "min_tune_pairs": regions.MIN_TUNE_PAIRS,
          "threshold_grid": list(regions.THRESHOLD_GRID)}
written = [settings.write_record(arts.grad_cam, cs, every, references, human, stamp,
                                 params),
           settings.save_hits(arts.cam_hits, cs, every, references),
           findings.write_findings(arts.findings(CHAPTER), [scoring], stamp)]
print("wrote", ", ".join(display.output_name(p) for p in written),
      "in the output folder")

# %% [markdown]
# The scoring check (oracle against random grid maps): {glue:text}`v_scoring`.
#
# ## What it means, and what it cannot mean
#
# When that check is validated, a hit rate above the grid chance level is evidence that a
# map looks at the finding. It is not yet evidence that the map shows what the *model*
# learned: a map can follow edges whatever the weights are, and the location prior earns
# hits without looking. {doc}`The next page <06b_sanity>` tests both. In `demo` the
# images are phantoms and the model is tiny: nothing here is a statement about BiomedCLIP.
# The hit rate ignores all but the map's maximum; mIoU depends on the threshold rule.
#
# ## Summary
#
# - The scoring check: {glue:text}`v_scoring`. The oracle hits
#   {glue:text}`ref_oracle`, a uniform map {glue:text}`ref_uniform` against its chance level
#   {glue:text}`ref_chance`; the grid chance level {glue:text}`ref_grid_chance`, checked by
#   simulation: {glue:text}`grid_check`.
# - Degenerate maps at the settings' CAM layers: {glue:text}`n_degenerate_total`, each
#   scored at its chance level.
# - Maps that point away from the finding more often than chance:
#   {glue:text}`below_chance`.
# - Human reference: {glue:text}`human_ref`.
#
# ## What's next
#
# {doc}`06b_sanity` takes what the models learned away (their weights, then their labels)
# and asks whether the maps notice, and whether they beat the location prior on lesions it
# does not cover.
#
# ## Exercises
#
# ```{exercise}
# :label: ex-cam-uniform
#
# Show that the uniform map's hit equals the chance level pair by pair, not only on average,
# and explain why scoring a constant map by `argmax` would not.
# ```
#
# ```{solution-start} ex-cam-uniform
# :class: dropdown
# ```

# %%
uniform_pp = references["uniform"]["per_pair"]
print("largest |hit − chance| of the uniform map:",
      float(np.abs(uniform_pp["hit_rate"] - uniform_pp["chance"]).max()))
first_pixel = np.zeros((1, cs.base.masks.shape[-1] ** 2)).argmax(1)
print("argmax of an all-zero map is pixel", int(first_pixel[0]),
      "(the top-left corner): inside the region for",
      int(cs.base.masks.reshape(len(cs.base), -1)[:, 0].sum()), "of", len(cs.base),
      "pairs")

# %% [markdown]
# Every pixel of a constant map ties for the maximum, so the tie rule spreads the hit over the
# whole image: its expected value is the area fraction. `argmax` returns the first pixel, the
# top-left corner, which lies inside the region for the number of pairs printed above: such
# maps would score a "miss" produced by array order, not by the map.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-cam-agnostic
#
# EigenCAM and attention rollout give every label of an image the same map. On images with
# two or more scored findings, how often do their maps hit *every* finding of the image,
# compared with Grad-CAM?
# ```
#
# ```{solution-start} ex-cam-agnostic
# :class: dropdown
# ```

# %%
key = "control" if "control" in cs.scorers else "ft"
image_of = cs.scored[key].table.image_id.to_numpy()
several = pd.Series(image_of).duplicated(keep=False).to_numpy()
for m in ("gradcam", "eigencam", "rollout"):
    hit_every = pd.Series(every.hits(key, m)[several] > 0.5).groupby(
        image_of[several]).all()
    print(f"{cs.names[key]} · {attribution.NAMES[m]}: {len(hit_every)} images with "
          f"several findings, every finding hit on {hit_every.mean():.2f} of them")

# %% [markdown]
# A class-agnostic map has one maximum per image: with two findings in different places it
# must miss one. A label-specific method *can* point at each finding in turn; whether it
# does here is the Grad-CAM line above.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-cam-size
#
# Split the test pairs by the size of their region (area fraction below and above the
# median). Which gains more over the location prior on small findings: the fine-tuned model
# or the positive control?
# ```
#
# ```{solution-start} ex-cam-size
# :class: dropdown
# ```

# %%
small_gain = {}
for key in [k for k in ("ft", "control") if k in cs.scorers]:
    area = regions.area_fraction(cs.scored[key].masks)
    small = area < np.median(area)
    hit = every.hits(key)
    prior_hit = (references["location prior"]["per_pair"]["hit_rate"]
                 if "location prior" in references else np.zeros_like(hit))
    for name, sel in (("small", small), ("large", ~small)):
        print(f"{cs.names[key]:>18} · {name} regions: hit {hit[sel].mean():.3f}, "
              f"prior {prior_hit[sel].mean():.3f}, area {area[sel].mean():.3f}")
    small_gain[key] = float(hit[small].mean() - prior_hit[small].mean())
glue("small_gain", "; ".join(f"{cs.names[k]} {v:+.3f}" for k, v in small_gain.items())
     or "no setting to compare", display=False)
if len(small_gain) == 2:  # same test pairs: the paired difference of the two gains
    area = regions.area_fraction(cs.scored["ft"].masks)
    small = area < np.median(area)
    reports = cs.scored["ft"].table.report_id.to_numpy()[small]
    gap = regions.paired_gain(every.hits("ft")[small], every.hits("control")[small],
                              reports, n_boot)
    winner = ("the fine-tuned model" if gap.above(0) else
              "the positive control" if gap.below(0) else
              "neither (the interval contains 0)" if gap.contains(0) else
              "undecided (no interval)")
    glue("small_winner", f"{winner}; fine-tuned minus control is "
         f"{gap.format(signed=True)}", display=False)
else:
    glue("small_winner", "not comparable in this profile", display=False)

# %% [markdown]
# On small regions the chance level and the prior are low, so any gain there comes from
# looking at the image. Hit rate minus the prior's on the small half, Grad-CAM:
# {glue:text}`small_gain`. Which gains more: {glue:text}`small_winner`. A model that
# only learned where findings usually are gains nothing on small regions; a negative gain
# means its maps do worse there than knowing the usual place.
#
# ```{solution-end}
# ```
