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
# **The question.** The original study {cite}`sadman2025interpreting` shows Grad-CAM maps and
# judges them by eye. A map is an explanation only if it points at the finding, and a score
# of "points at the finding" means something only if we know what it gives when nothing
# localises (a map that never looks at the image) and when something certainly does (a model
# that was told where the findings are). This chapter builds both ends first, then asks of
# each setting: do its maps find the finding more often than a map that knows only where
# findings usually are, and do they stop doing so when the model's weights or its labels are
# randomised?
#
# **Objectives.** By the end of this chapter you will be able to
#
# 1. score a saliency map against a region with CheXlocalize's hit rate (the pointing game)
#    and mIoU, each beside its chance level, and validate the scoring with maps whose scores
#    are known (§ Validating the scoring);
# 2. handle ties and degenerate (constant) maps so that no map scores by array order
#    (§ Method);
# 3. build a positive control whose evidence is local by construction, and say why it is a
#    control, not a result (§ The positive control);
# 4. compute seven attribution methods for a ViT from one forward and backward pass,
#    including attention rollout and Chefer et al.'s gradient-weighted attention
#    (§ Seven methods, five settings);
# 5. run Adebayo et al.'s cascading model randomisation and the data-randomisation check
#    (§ Sanity checks);
# 6. read localisation block by block (§ Layer by layer) and per pathology (§ Per pathology);
# 7. decide whether maps beat the location prior on lesions the prior does not cover
#    (§ Off the prior).
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# |---|---|---|
# | {doc}`02_zero_shot`, {doc}`03_linear_probe`, {doc}`04_fine_tune` | Necessary | the models explained here |
# | {term}`Grad-CAM`, {term}`Hit rate`, {term}`mIoU` | Necessary | {doc}`../glossary` |
# | Self-attention in a vision transformer | Helpful | tokens, heads, the CLS token |
# | Bootstrap confidence intervals, rank correlation | Helpful | every number carries a 95% CI |
#
# **Time to learn**: 60 minutes.
#
# ## Method
#
# **Settings.** Every setting is a differentiable score $s_j(x)$ of label $j$ that passes
# through the ViT image tower, so one set of methods explains them all: zero-shot with the
# classifier chapter 2 selected on validation (the paired-prompt decision
# $\cos(u, v_j^+) - \cos(u, v_j^-)$ of its template and prompt ensemble), zero-shot with the
# original study's positive prompt alone ($\cos(u, v_j^+)$), the linear probe's logit through the frozen
# tower, the fine-tuned model's logit, and a positive control (§ The positive control).
#
# **Methods.** Grad-CAM {cite}`selvaraju2017gradcam` weights the activations $A^c$ of a
# block's patch-token grid ($g \times g$, CLS dropped) by the spatially averaged gradient,
#
# $$ M = \mathrm{ReLU}\Big(\sum_c \alpha_c A^c\Big), \qquad
#    \alpha_c = \frac{1}{g^2}\sum_{u,v} \frac{\partial s}{\partial A^c_{uv}} ; $$ (eq-gradcam)
#
# Grad-CAM++ {cite}`chattopadhay2018gradcampp`, LayerCAM {cite}`jiang2021layercam` and
# ScoreCAM {cite}`wang2020scorecam` change the weights (higher-order gradients, per-position
# positive gradients, the score of the input masked by each channel); EigenCAM
# {cite}`muhammad2020eigencam` takes the activations' first principal component and ignores
# the label. All five run through pytorch-grad-cam on the last layer whose patch tokens reach
# the score ({func}`helpers.saliency.attribution.default_layer`): the input of the last block for a
# CLS-pooled tower (BiomedCLIP, the tiny model), the final norm for the positive control. Two methods read the attention
# probabilities $A_b$ (heads $h$, tokens $N$) of every block $b$. Attention rollout
# {cite}`abnar2020quantifying` multiplies head-averaged attention with the residual path,
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
# the map is the read-out row of $R$ (the CLS token's) over the patch columns. Rollout, like
# EigenCAM, gives every label of an image the same map. timm computes attention with a fused
# kernel that never forms $A_b$; for explanation the blocks are switched to the explicit
# softmax and $A_b$ is read by a hook ({func}`helpers.saliency.attribution.attention_capture`). All
# one-pass methods come from the same forward and backward pass; ScoreCAM needs one forward
# per channel and runs on a subset of {glue:text}`scorecam_pairs_glue` pairs.
#
# **Scores.** For each (image, label) pair with map $M$ (scaled to $[0, 1]$) and true region
# $G$, the **hit rate** (CheXlocalize's name for the pointing game {cite}`saporta2022chexlocalize`)
# asks whether the map's maximum lies in $G$
# {cite}`zhang2018topdown`. Where several pixels tie for the maximum, the
# hit is the share of them inside $G$ (the expected hit of a random tie-break); a
# **degenerate** map (all values equal: all zero, constant, or not finite) ties everywhere
# and therefore scores exactly its **chance level**, the area fraction of the region:
#
# $$ \mathrm{hit}(M, G) = \frac{|P \cap G|}{|P|}, \quad
#    P = \{p : M_p \ge \max M - \epsilon\}, \qquad
#    \mathrm{chance}(G) = \frac{|G|}{S^2} . $$ (eq-hit)
#
# ```{literalinclude} ../../helpers/saliency/regions.py
# :pyobject: pointing_game
# ```
#
# Degenerate maps are counted for every setting and method; none scores a hit or a miss
# through the order of an array. **mIoU** is the mean IoU of the segmentation $\{M \ge t\}$
# with $G$ (0 for an empty segmentation), with $t$ tuned per pathology on validation pairs
# from CheXlocalize's grid $0.2, 0.3, \dots, 0.7$:
#
# ```{literalinclude} ../../helpers/saliency/regions.py
# :pyobject: iou
# ```
#
# **Threshold rule.** A pathology's threshold is tuned on its own validation pairs when it has
# at least {glue:text}`min_tune_pairs` of them; otherwise on all validation pairs pooled (if
# there are that many); otherwise each map gets Otsu's threshold (CheXlocalize's default),
# and the validation pairs of the scored image's own report are always left out. No
# threshold is tuned on one or two images. **IoU@0.1** is the share of pairs with IoU at least
# 0.1, the lenient end of ChestX-ray8's thresholds {cite}`wang2017chestxray8` (not to be
# confused with CheXlocalize's hit rate, which is the pointing game).
# Every CI resamples reports (1,000 in CheXlocalize; {glue:text}`n_boot_glue` here).
#
# **Sanity checks** {cite}`adebayo2018sanity`. *Cascading model randomisation* re-draws the
# weights from the top down (head, projection, final norm, blocks from last to first, patch
# embedding) and reports, after each step, the Spearman rank correlation of the maps with the
# original ones ({func}`helpers.saliency.regions.rank_correlation`, on $4 \times 4$ block means).
# *Data randomisation* explains the model chapter 4 fine-tuned on labels permuted across
# training reports.

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
cascade_pairs = 24  # pairs for the cascading randomisation curves
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
from helpers.analysis.metrics import bootstrap_stat
from helpers.book import display
from helpers.book.stamp import show_stamp
from helpers.book.study import load_study, localization_pairs
from helpers.protocols import probe, repeats, zeroshot
from helpers.saliency import attribution, explain, offprior, positive_control, regions
from helpers.storage import atomic_write_json

study = load_study(profile, model, image_dir=image_dir, style=style,
                   uncertain_policy=uncertain_policy, split_seed=split_seed,
                   split_fractions=split_fractions, views=views,
                   reports_path=reports_path, limit=limit, on_error=on_error)
arts = study.artefacts
LABELS = study.labels
stamp = study.stamp()
show_stamp(stamp)
for name, value in (("n_boot_glue", n_boot), ("scorecam_pairs_glue", scorecam_pairs),
                    ("cascade_pairs_glue", cascade_pairs)):
    glue(name, value, display=False)
glue("min_tune_pairs", regions.MIN_TUNE_PAIRS, display=False)
CHAPTER = "06_grad_cam"
fmt = display.fmt_ci

# %% [markdown]
# ## Pairs, and which model may score them
#
# A pair is an image and one of its findings with a known region. In `demo` the regions are
# the phantoms' exact masks; in `full`, the annotation file's regions. Validation pairs tune
# the segmentation thresholds. In `demo` every setting is scored on the same test pairs. In
# `full`, where annotations are few, every annotated image is scored: zero-shot on all of
# them; the probe on all of them, an annotated *training* image by a probe fitted without
# its report ($k$-fold, {func}`helpers.saliency.explain.holdout_probes`); the fine-tuned models only on
# images outside their training split.

# %%
has_masks = "mask_path" in study.table
ALL = ("train", "val", "test")
SCORED = ({k: ("test",) for k in ("zs", "zs+", "lp", "ft", "control")} if has_masks else
          {"zs": ALL, "zs+": ALL, "lp": ALL, "ft": ("val", "test")})
_cache = {}


def pairs_of(splits):
    if splits not in _cache:
        _cache[splits] = localization_pairs(study, splits, max_pairs or None,
                                            annotations or None)
    return _cache[splits]


tune = pairs_of(("val",))
scored = {k: pairs_of(s) for k, s in SCORED.items()}
base = scored["zs"]  # the pairs every reference map is scored on
n_table = pd.DataFrame({
    "scored on splits": {k: ", ".join(s) for k, s in SCORED.items()},
    "pairs": {k: len(p) for k, p in scored.items()},
    "images": {k: p.table.image_id.nunique() for k, p in scored.items()},
    "reports": {k: p.table.report_id.nunique() for k, p in scored.items()}})
tt = tune.table
n_table.loc["threshold tuning (val)"] = ["val", len(tune), tt.image_id.nunique(),
                                         tt.report_id.nunique()]
glue("n_test_pairs", len(base), display=False)
glue("n_val_pairs", len(tune), display=False)
n_table

# %% [markdown]
# ## Validating the scoring
#
# Before any model: four maps whose scores we know, scored on the same pairs. The **oracle**
# is the true region blurred (it must hit almost always); a **uniform** map is degenerate,
# so it scores exactly the chance level; a **random** map's maximum is a random pixel, so it
# should score the chance level on average; a **centre** map always points at the middle of
# the image. The **location prior** (per label, the mean of its training regions: where the
# finding usually is, without looking) is the bar every model must clear.

# %%
GRID = attribution.native_grid(study.model.visual)
REF_GRID = {"random grid": GRID}  # the other reference maps are defined per pixel


def ref_stats(name, maps_of):
    g = REF_GRID.get(name)
    return (explain.score_maps(maps_of(tune), tune, g),
            explain.score_maps(maps_of(base), base, g))


REFS = {k: (lambda p, k=k: regions.reference_maps(k, p.masks, seed=0, grid=GRID))
        for k in regions.REFERENCE_MAPS}
prior = None
if has_masks:
    train_pairs = localization_pairs(study, "train", 2000)
    prior = regions.location_prior(train_pairs.masks, train_pairs.table.label)
    S = study.info.image_size
    REFS["location prior"] = lambda p: regions.prior_maps(prior, p.table.label, S)
ref = {}
for name, maps_of in REFS.items():
    st_tune, st = ref_stats(name, maps_of)
    ref[name] = explain.summarise_setting(st_tune, tune, st, base, n_boot)


def row(r):
    return {"hit rate": fmt(r["hit_rate"], r["hit_rate_ci"]),
            "chance level": fmt(r["chance"], r["chance_ci"]),
            "hit − chance": fmt(r["hit_minus_chance"], r["hit_minus_chance_ci"],
                                signed=True),
            "mIoU": fmt(r["miou"], r["miou_ci"]),
            "IoU@0.1": fmt(r["iou@0.1"], r["iou@0.1_ci"]),
            "degenerate maps": f"{r['n_degenerate']} / {r['n_pairs']}"}


validation_table = pd.DataFrame({k: row(r) for k, r in ref.items()}).T
for k in ("oracle", "uniform", "random", "centre"):
    glue(f"ref_{k}", fmt(ref[k]["hit_rate"], ref[k]["hit_rate_ci"]), display=False)
rg = ref["random grid"]
glue("ref_random_grid", fmt(rg["hit_rate"], rg["hit_rate_ci"]), display=False)
glue("ref_chance", fmt(ref["uniform"]["chance"], ref["uniform"]["chance_ci"]),
     display=False)
glue("ref_grid_chance", fmt(rg["chance"], rg["chance_ci"]), display=False)
glue("grid_side", GRID, display=False)
glue("grid_ratio", f"{rg['chance'] / ref['uniform']['chance']:.2f}", display=False)
validation_table

# %% [markdown]
# The oracle scores {glue:text}`ref_oracle`, the uniform map {glue:text}`ref_uniform` and the
# random map {glue:text}`ref_random`, against a chance level of {glue:text}`ref_chance`: the
# hit rate measures what it should.
#
# **The chance level of a coarse map.** The area fraction is the chance level of a map whose
# peak can be any pixel. Every attribution map here is computed on the tower's
# {glue:text}`grid_side` × {glue:text}`grid_side` patch grid and upsampled bilinearly: it
# peaks near a cell centre or in the clamped edge strips, never uniformly. Its chance level
# is the expected hit of random grid values upsampled the same way, found by Monte Carlo
# ({func}`helpers.saliency.regions.grid_chance`): {glue:text}`ref_grid_chance` on these pairs,
# {glue:text}`grid_ratio` times the area fraction. The "random grid" row checks it: random
# grid maps score {glue:text}`ref_random_grid`. Every setting's "hit − chance" below uses
# this level. The centre map ({glue:text}`ref_centre`) shows how much a
# fixed guess earns on these findings; the location prior (last row, `demo` only) is the
# stronger fixed guess, and the one a model's maps must beat.
#
# ## The positive control
#
# To show that the methods *can* report localisation, we need a model whose evidence is
# certainly local ({mod}`helpers.saliency.positive_control`). Two things make it so. **The data**: every
# image is shown with each of its findings *marked* inside the finding's region by a faint
# grating whose orientation names the finding, so the evidence for a finding lies in its
# region and nowhere else. **The model**: the study model's image tower with a patch-level
# head, every patch token getting one logit per label, $z_{pj}$, and the image's logit their
# smooth maximum (log-mean-exp with sharpness $r$),
#
# $$ z_j = \frac{1}{r} \log \frac{1}{P} \sum_{p=1}^{P} e^{r z_{pj}} , $$ (eq-lse)
#
# ```{literalinclude} ../../helpers/saliency/positive_control.py
# :pyobject: LocalisingNet.pool
# ```
#
# trained on the training split with the image-level labels *and* the regions as patch-level
# targets (a patch is positive for a finding that covers enough of it); the tower's last
# block, its final norm and the head are trained, the earlier blocks stay the study model's.
# Its maps are computed on the marked images and scored against the same regions as every
# other setting. It was told where the findings are and shown them marked, so its maps
# localising is no result about any model of the study: it is a control, the known-positive
# case that shows what the scores look like when localisation exists. Its weights are cached
# under the run folder, keyed by its configuration, base weights and data, so the book trains
# it once.

# %% tags=["nbval-ignore-output"]
control, PIX = None, {}
if has_masks:
    cfg = positive_control.ControlConfig(epochs=control_epochs,
                                         max_images=control_images)
    control = positive_control.positive_control(study, cfg, progress=False)
    PIX["control"] = control.pixels  # it sees, and is explained on, marked images
    rec = control.record
    print(f"positive control: {rec['n_images']} training images, {cfg.epochs} epochs, "
          f"key {rec['key']}, " + ("loaded from its cache" if rec["cached"] else
                                   f"trained now in {rec['train_s']:.0f} s"))
else:
    print("no training regions in this profile: the positive control runs in demo only")

# %% [markdown]
# ## Seven methods, five settings
#
# The settings, each explained on the same pairs by every method:

# %%
zs_name = explain.selected_classifier(study)
pos, neg = explain.zero_shot_classifier(study, zs_name)
seed_pos = study.text_embeddings(zeroshot.single_prompt_texts("bare", LABELS))
lp = probe.load_probe(arts.probe())
ft = repeats.finetuned_scorer(study)
ft_perm = (repeats.finetuned_scorer(study, "permuted")
           if 0 in repeats.finetuned_seeds(study, "permuted") else None)
visual = study.model.visual
NAMES = {"zs": f"zero-shot ({zs_name})", "zs+": "zero-shot, positive prompt only",
         "lp": "linear probe", "ft": "fine-tuned", "control": "positive control",
         "ft-permuted": "fine-tuned on permuted labels"}
scorers = {"zs": explain.EmbeddingScorer(visual, explain.zero_shot_head(pos, neg)),
           "zs+": explain.EmbeddingScorer(visual, explain.zero_shot_head(seed_pos)),
           "lp": explain.EmbeddingScorer(visual, lp.torch_logits),
           "ft": explain.EmbeddingScorer(ft.clip.visual, explain.finetuned_head(ft))}
if control is not None:
    scorers["control"] = control.net
extra = {}  # explained like a setting, but not one: the data-randomisation model
if ft_perm is not None:
    extra["ft-permuted"] = explain.EmbeddingScorer(ft_perm.clip.visual,
                                               explain.finetuned_head(ft_perm))
    SCORED["ft-permuted"] = SCORED["ft"]
    scored["ft-permuted"] = scored["ft"]
LAYER = attribution.default_layer(scorers["zs"])  # every setting, the control included
glue("zs_name", zs_name, display=False)
ex_pairs = scored["ft"]
show = np.sort(np.random.default_rng(0).choice(
    len(ex_pairs), min(n_examples, len(ex_pairs)), replace=False))


def explain_setting(key, pairs, methods=attribution.ONE_PASS, layers=False, keep=()):
    """One setting's maps on ``pairs``; the probe takes a held-out probe per image."""
    if key != "lp" or has_masks:
        sc = {**scorers, **extra}[key]
        return explain.explain_pairs(sc, study, pairs, methods, layers, keep,
                                     layer=LAYER, progress=False, pixels=PIX.get(key))
    parts = [(i, explain.explain_pairs(explain.EmbeddingScorer(visual, p.torch_logits),
                                       study, pairs.subset(i), methods, layers,
                                       layer=LAYER, progress=False))
             for i, p in explain.holdout_probes(study, lp, pairs, k_folds)]
    order = np.argsort(np.concatenate([i for i, _ in parts]))
    keys = parts[0][1].stats if parts else {}
    return explain.Explained({
        k: {s: np.concatenate([e.stats[k][s] for _, e in parts])[order]
            for s in parts[0][1].stats[k]} for k in keys})


def sub(pairs, n, seed=0):
    idx = np.sort(np.random.default_rng(seed).choice(len(pairs), min(n, len(pairs)),
                                                     replace=False))
    return pairs.subset(idx)


res, layer_res, ex_maps = {}, {}, {}
for key in [*scorers, *extra]:
    main = key in scorers
    e_tune = explain_setting(key, tune, layers=main)
    e = explain_setting(key, scored[key], layers=main,
                keep=show if key in ("ft", "control") else ())
    ex_maps[key] = e.kept
    for m, st in e.stats.items():
        r = explain.summarise_setting(e_tune.stats[m], tune, st, scored[key], n_boot)
        (layer_res if "@" in m else res)[(key, m.split("@")[-1] if "@" in m else m)] = r
    if scorecam_pairs and main:  # no tuning pairs: Otsu's thresholds, by the rule
        sc_pairs = sub(scored[key], scorecam_pairs)
        st_s = explain_setting(key, sc_pairs, ("scorecam",)).stats.get("scorecam")
        if st_s is not None:
            none = regions.concat_stats([])
            res[(key, "scorecam")] = explain.summarise_setting(
                none, sc_pairs.subset([]), st_s, sc_pairs, n_boot)

# %% [markdown]
# Every setting and method: hit rate beside its chance level (the mean area fraction of the
# regions scored), mIoU, IoU@0.1 and the number of degenerate maps. ScoreCAM rows are scored
# on a subset of {glue:text}`scorecam_pairs_glue` pairs (so their chance level differs), with Otsu's
# thresholds (the rule above, with no tuning pairs). The last rows are the
# model fine-tuned on permuted labels (the data-randomisation check below).

# %%
method_table = pd.DataFrame(
    {(NAMES[k], attribution.NAMES[m]): row(r) for (k, m), r in res.items()}).T
method_table.index.names = ["setting", "method"]
deg = {f"{NAMES[k]} · {attribution.NAMES[m]}": r["n_degenerate"]
       for (k, m), r in res.items() if r["n_degenerate"]}
glue("n_degenerate_total", sum(deg.values()), display=False)
glue("degenerate_where", ", ".join(f"{k} ({v})" for k, v in deg.items()) or "none",
     display=False)
below = [f"{NAMES[k]} · {attribution.NAMES[m]} ({fmt(r['hit_rate'])} against "
         f"{fmt(r['chance'])})" for (k, m), r in res.items()
         if r["hit_minus_chance_ci"][1] < 0]
glue("below_chance", "; ".join(below) if below else "none", display=False)
method_table

# %% [markdown]
# Degenerate maps in this run: {glue:text}`n_degenerate_total` in total, by setting and
# method: {glue:text}`degenerate_where`. Each is scored at its chance level and counted
# here, never as a hit or a miss of an arbitrary pixel.
#
# Maps that peak *outside* the findings significantly more often than chance (the whole
# interval of hit − chance below 0): {glue:text}`below_chance`. Such a map is not merely
# uninformative: it points away from the finding, at something else in the image.
#
# **Conventions, checked.** The tie rule and the grid-aware chance level are this book's
# choices. CheXlocalize's own evaluation code takes the *first* maximum in row-major order
# (a constant map "points" at the top-left pixel) and averages IoU only over pairs where both
# masks are non-empty ({func}`helpers.saliency.regions.literal_hit`; the port is tested against
# their code). Grad-CAM, both ways:

# %%
literal = pd.DataFrame({NAMES[k]: {
    "hit rate (this book)": fmt(r["hit_rate"], r["hit_rate_ci"]),
    "hit rate (CheXlocalize, first maximum)": fmt(r["hit_rate_literal"],
                                                  r["hit_rate_literal_ci"]),
    "mIoU (this book)": fmt(r["miou"], r["miou_ci"]),
    "mIoU (CheXlocalize, both masks non-empty)": fmt(r["miou_literal"],
                                                     r["miou_literal_ci"])}
    for (k, m), r in res.items() if m == "gradcam" and k in scorers}).T
literal

# %% [markdown]
# Where the two columns of a metric agree, the verdicts below do not depend on the
# convention; where they differ, it is ties (coarse or saturated maps) or empty segmentations
# that make the difference.

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(6.8, 4.4))
methods_shown = [m for m in attribution.METHODS if any(mm == m for _, mm in res)]
width = 0.8 / max(1, len(scorers))
for i, key in enumerate(scorers):
    xs, ys, lo, hi = [], [], [], []
    for j, m in enumerate(methods_shown):
        r = res.get((key, m))
        if r is None:
            continue
        xs.append(j + (i - (len(scorers) - 1) / 2) * width)
        ys.append(r["hit_minus_chance"])
        lo.append(r["hit_minus_chance"] - r["hit_minus_chance_ci"][0])
        hi.append(r["hit_minus_chance_ci"][1] - r["hit_minus_chance"])
    ax.bar(xs, ys, width, yerr=[np.maximum(lo, 0), np.maximum(hi, 0)], capsize=2,
           label=NAMES[key])
if prior is not None:
    p = ref["location prior"]["hit_minus_chance"]
    ax.axhline(p, color="k", ls="--", lw=1, label="location prior")
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
# line is the location prior's. A bar above the line localises better than knowing where
# findings usually are.
# ```
#
# ## Per pathology
#
# CheXlocalize reports every pathology separately: hit rate and mIoU at the threshold tuned
# for it (or pooled, or Otsu's, by the rule above), with the number of pairs. Grad-CAM, every
# setting:

# %%
def path_row(v):
    return {"n": v["n"], "hit rate": f"{v['hit_rate']:.3f}",
            "chance": f"{v['chance']:.3f}",
            "mIoU": f"{v['miou']:.3f}", "threshold": v["threshold"]}


per_path = {(lab, NAMES[key]): path_row(v) for key in scorers
            for lab, v in res[(key, "gradcam")]["per_label"].items()}
if prior is not None:
    per_path.update({(lab, "location prior"): path_row(v)
                     for lab, v in ref["location prior"]["per_label"].items()})
per_path_table = pd.DataFrame(per_path).T.sort_index(level=0)
per_path_table.index.names = ["pathology", "setting"]
per_path_table

# %% [markdown]
# Small or thin findings (a nodule, a fracture, a line) have a small chance level and are
# hard to hit; a large one (an enlarged heart) is hit often by luck. Read each row against
# its own chance level and the location prior's row.
#
# ## Sanity checks
#
# **Cascading model randomisation.** For the zero-shot, probe, fine-tuned and control
# settings, on {glue:text}`cascade_pairs_glue` pairs: after each step of re-initialisation from the top
# down, the Spearman correlation of every method's maps with the original maps, and Grad-CAM's
# hit rate. Maps that explain the model must move away from the original as its learned
# weights go.

# %%
casc_pairs = sub(base, cascade_pairs)
casc_keys = [k for k in ("zs", "lp", "ft", "control") if k in scorers]
casc, casc_health = {}, {}
for key in casc_keys if len(casc_pairs) else []:
    kw = dict(small=True, layer=LAYER, progress=False, pixels=PIX.get(key))
    orig = explain.explain_pairs(scorers[key], study, casc_pairs, **kw)
    steps = [("trained", orig)]
    for step, rnd in explain.cascade(scorers[key], seed=0):
        e = explain.explain_pairs(rnd, study, casc_pairs, **kw)
        casc_health[(key, step)] = explain.randomisation_health(
            scorers[key], rnd, study, casc_pairs, e.stats["gradcam"]["degenerate"],
            PIX.get(key))
        steps.append((step, e))
    for step, e in steps:
        failed = casc_health.get((key, step), {}).get("failed", False)
        for m in attribution.ONE_PASS:
            rho = regions.rank_correlation(orig.small[m], e.small[m])
            ok = np.isfinite(rho)
            v, lo, hi = (np.nan,) * 3
            if ok.sum() > 1 and not failed:
                v, lo, hi = bootstrap_stat(lambda i, r=rho[ok]: float(r[i].mean()),
                                           casc_pairs.table.report_id.to_numpy()[ok],
                                           n_boot)
            casc[(key, step, m)] = {
                "spearman": v, "spearman_ci": [lo, hi], "n_defined": int(ok.sum()),
                "failed_step": failed,
                "hit_rate": None if failed else float(e.stats[m]["hit"].mean())}
failed_steps = [f"{NAMES[k]} · {st}" for (k, st), h in casc_health.items()
                if h["failed"]]
glue("failed_steps", ", ".join(failed_steps) if failed_steps else
     "none: at every step the randomised scores and input gradients are non-zero and "
     "differ from the trained model's, and its Grad-CAM maps are not degenerate",
     display=False)

# %% tags=["hide-input"]
n_panels = max(1, len(casc_keys))
n_rows = (n_panels + 1) // 2
fig, axes = plt.subplots(n_rows, 2, figsize=(6.8, 3.3 * n_rows), sharey=True,
                         squeeze=False)
for ax in axes.flat[len(casc_keys):]:
    ax.set_visible(False)
for ax, key in zip(axes.flat, casc_keys):
    names = list(dict.fromkeys(s for k, s, _ in casc if k == key))
    for m in attribution.ONE_PASS:
        v = [casc[(key, s, m)]["spearman"] for s in names]
        ci = np.array([casc[(key, s, m)]["spearman_ci"] for s in names], dtype=float)
        line, = ax.plot(range(len(names)), v, marker="o", ms=3,
                        label=attribution.NAMES[m])
        ax.fill_between(range(len(names)), ci[:, 0], ci[:, 1], alpha=0.12)
        none = [i for i, s in enumerate(names) if casc[(key, s, m)]["n_defined"] == 0
                or casc[(key, s, m)]["failed_step"]]
        ax.plot(none, [0] * len(none), ls="", marker="x", color=line.get_color())
    ax.set_xticks(range(len(names)), names, rotation=70, fontsize=9)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title(NAMES[key], fontsize=10)
for ax in axes[:, 0]:
    ax.set_ylabel("Spearman ρ with\nthe trained model's maps")
fig.tight_layout()
fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=3,
           fontsize=9, bbox_to_anchor=(0.5, 0.0), frameon=False)
glue("fig_cascade", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_cascade
# :name: fig-cascade
#
# Cascading model randomisation: rank correlation (mean over pairs, 95% CI) of each method's
# maps with the trained model's maps, as more of the model is re-initialised from the top
# down. A cross at zero: a failed step (its scores or gradients vanished, or most of its
# maps are degenerate) or a method whose every map is constant, so no correlation is defined.
# A correlation that stays high explains the architecture and the image, not what the model
# learned.
# ```
#
# Every step is checked before it is scored ({func}`helpers.saliency.explain.randomisation_health`): the
# randomised scorer's scores and input gradients must be non-zero and differ from the
# trained model's, and at most half of its maps may be degenerate; a step that fails is
# reported, never scored at the chance level. Failed steps in this run:
# {glue:text}`failed_steps`.
#
# **Model randomisation, every setting, all pairs.** Grad-CAM of each setting with the whole
# tower re-initialised (two independent draws, seeds 0 and 1): a setting passes when its hit
# rate is above its randomised copy's over the same pairs; the difference between the two
# randomised draws is the negative control (two models that learned nothing).
#
# **Data randomisation.** The model that chapter 4 fine-tuned on permuted labels, explained
# on the same pairs: the fine-tuned model passes when its maps hit more often.

# %%
rand_hits, rand_health, rand_models = {}, {}, {}
for key in scorers:
    for seed in (0, 1):
        rnd = rand_models[(key, seed)] = explain.randomised(scorers[key], seed=seed)
        e = explain.explain_pairs(rnd, study, scored[key], ("gradcam",), layer=LAYER,
                              progress=False, pixels=PIX.get(key))
        rand_hits[(key, seed)] = e.stats["gradcam"]["hit"]
        rand_health[(key, seed)] = explain.randomisation_health(
            scorers[key], rnd, study, scored[key], e.stats["gradcam"]["degenerate"],
            PIX.get(key))


def mean_of(values):
    """fn(idx): the mean of per-pair ``values`` over pairs ``idx``."""
    v = np.asarray(values, dtype=float)
    return lambda idx: float(v[idx].mean())


def versus(a, b, c, d, pairs):
    """The paired test of mean(a - b) (the finding) against mean(c - d) (its
    control), on the same report resamples of ``pairs``."""
    return findings.compare(mean_of(np.asarray(a) - b), mean_of(np.asarray(c) - d),
                            pairs.table.report_id.to_numpy(), n_boot)


def hits(key):
    return res[(key, "gradcam")]["per_pair"]["hit_rate"]


sanity = {}
for key in scorers:
    g = scored[key]
    h0, h1 = rand_hits[(key, 0)], rand_hits[(key, 1)]
    sanity[key] = {"trained − randomised": regions.paired_gain(
                       hits(key), h0, g.table.report_id.to_numpy(), n_boot),
                   "randomised (1) − randomised (0)": regions.paired_gain(
                       h1, h0, g.table.report_id.to_numpy(), n_boot)}
    final = [v for (k, s, m), v in casc.items() if k == key and m == "gradcam"]
    sanity[key]["final Spearman"] = (final[-1]["spearman"], final[-1]["spearman_ci"]) \
        if final else (np.nan, [np.nan, np.nan])
if ft_perm is not None:
    sanity["ft"]["trained − permuted-label model"] = regions.paired_gain(
        hits("ft"), hits("ft-permuted"), scored["ft"].table.report_id.to_numpy(),
        n_boot)
sanity_table = pd.DataFrame({
    NAMES[k]: {n: fmt(v, ci, signed=True) for n, (v, ci) in d.items()}
    for k, d in sanity.items()}).T
sanity_table["randomised copies (0 / 1)"] = [
    " / ".join("failed" if rand_health[(k, s)]["failed"] else
               f"ok, {rand_health[(k, s)]['degenerate_share']:.0%} degenerate"
               for s in (0, 1)) for k in sanity]
sanity_table

# %% [markdown]
# Read the last column first: each randomised copy is checked as the cascade's steps are
# (non-zero scores and gradients that differ from the trained model's, few degenerate maps);
# a failed copy could only score the chance level, and the verdicts below then say so. The
# "final Spearman" column is the rank correlation of Grad-CAM maps with the trained model's
# after the whole cascade (pairs with a constant map left out, as their correlation is
# undefined).

# %% [markdown]
# ## Off the prior: lesions where findings usually are not
#
# The phantoms draw each lesion where radiologists' boxes put that finding, the positions
# the location prior averages, so on the test pairs the prior is strong by construction: it
# hits {glue:text}`prior_hit_all` of them. A map that beats it there may have learned little
# more than where findings usually are, and whether it beats it is partly decided by the
# renderer. The verdict "beats the location prior" is therefore read on pairs where knowing
# the usual place does not help, found by **selection** from the renderer's own output
# ({mod}`helpers.saliency.offprior`). A label's **top-mass region** is the set of its prior's
# highest pixels that together hold {glue:text}`off_mass` of the prior's mass. Every test
# report with a drawn finding is rendered again with fresh random streams (a new patient,
# new positions, sizes and conspicuity for every finding), and a pair is kept when at most
# {glue:text}`off_max_overlap` of its region lies inside its label's top-mass region. The
# renderer itself is unchanged: moving lesions by hand would need a placement rule per
# finding and could put them where no such finding is ever drawn, while the selection keeps
# lesions the renderer does draw, from the tail of its position distribution. As many
# off-prior pairs are kept as test pairs are scored above; they come from test reports (no
# model trained on them), and the bootstrap resamples those reports. Every setting's
# Grad-CAM (same layer, same method) and its two randomised copies are scored on them; the
# positive control sees them marked, as it sees every image.

# %%
off = None
if prior is not None and len(base):
    off = offprior.off_prior_pairs(study, prior, n_pairs=len(base))
off_hits, off_rand, off_maps = {}, {}, None
if off is not None and len(off.pairs):
    off_px = {k: off.pixels for k in scorers}
    if control is not None:
        off_px["control"] = off.marked(LABELS, cfg)
    off_show = np.arange(min(n_examples, len(off.pairs)))
    for key in scorers:
        kw = dict(layer=LAYER, progress=False, pixels=off_px[key])
        e = explain.explain_pairs(scorers[key], study, off.pairs, ("gradcam",),
                                  keep=off_show if key == "ft" else (), **kw)
        off_hits[key] = e.stats["gradcam"]["hit"]
        off_maps = e.kept["gradcam"] if key == "ft" else off_maps
        for seed in (0, 1):
            off_rand[(key, seed)] = explain.explain_pairs(
                rand_models[(key, seed)], study, off.pairs, ("gradcam",),
                **kw).stats["gradcam"]["hit"]
    off_prior_hit = regions.pointing_game(
        regions.prior_maps(prior, off.pairs.table.label, study.info.image_size),
        off.pairs.masks)
    off_chance = regions.grid_chance(off.pairs.masks, GRID)
    off_groups = off.pairs.table.report_id.to_numpy()


def mean_ci(v):
    """The mean of per-pair values with its 95% CI over off-prior reports."""
    v = np.asarray(v, dtype=float)
    est, lo, hi = bootstrap_stat(lambda i: float(v[i].mean()), off_groups, n_boot)
    return fmt(est, [lo, hi])


if off_hits:
    off_table = pd.DataFrame({NAMES[k]: {
        "hit rate": mean_ci(off_hits[k]),
        "randomised copy (seed 0)": mean_ci(off_rand[(k, 0)]),
        "randomised copy (seed 1)": mean_ci(off_rand[(k, 1)])} for k in scorers}).T
    off_table["location prior"] = mean_ci(off_prior_hit)
    off_table["chance level (grid)"] = mean_ci(off_chance)
    mix = pd.DataFrame({"test pairs (scored above)": base.table.label.value_counts(),
                        "examined (fresh renders)": pd.Series(off.examined_by_label),
                        "of them off-prior": pd.Series(off.found_by_label),
                        "off-prior pairs scored": off.pairs.table.label.value_counts()})
    mix = mix.fillna(0).astype(int)
    mix["off-prior share"] = mix["of them off-prior"] / mix["examined (fresh renders)"]
    mix = mix.sort_values("off-prior share", ascending=False)
    rare = mix["off-prior share"].nsmallest(3)
    area_off = regions.area_fraction(off.pairs.masks).mean()
    area_all = regions.area_fraction(base.masks).mean()
    glue("n_off", len(off.pairs), display=False)
    glue("n_off_examined", off.n_examined, display=False)
    glue("n_off_rendered", off.n_rendered, display=False)
    glue("off_share", f"{len(off.pairs) / max(off.n_examined, 1):.0%}", display=False)
    glue("off_prior_hit", mean_ci(off_prior_hit), display=False)
    glue("off_chance", mean_ci(off_chance), display=False)
    glue("off_rare", ", ".join(f"{lab} ({v:.0%})" for lab, v in rare.items()),
         display=False)
    common = mix["off-prior share"].nlargest(3)
    glue("off_common", ", ".join(f"{lab} ({v:.0%})" for lab, v in common.items()),
         display=False)
    glue("off_area", f"{area_off:.3f} of the image on average, against {area_all:.3f} "
         "on the test pairs", display=False)
else:
    off_table = mix = pd.DataFrame()
    for k in ("n_off", "n_off_examined", "n_off_rendered", "off_share", "off_prior_hit",
              "off_chance", "off_rare", "off_common", "off_area"):
        glue(k, "– (no location prior in this profile)", display=False)
glue("prior_hit_all", fmt(ref["location prior"]["hit_rate"],
                          ref["location prior"]["hit_rate_ci"])
     if prior is not None else "–", display=False)
glue("off_mass", f"{offprior.TOP_MASS:.0%}", display=False)
glue("off_max_overlap", f"{offprior.MAX_OVERLAP:.0%}", display=False)
off_table

# %% [markdown]
# The selection examined {glue:text}`n_off_examined` pairs of {glue:text}`n_off_rendered`
# fresh renders and kept {glue:text}`n_off` ({glue:text}`off_share`). On them the location
# prior hits {glue:text}`off_prior_hit` (against {glue:text}`prior_hit_all` on the test
# pairs), and maps that carry no information hit {glue:text}`off_chance` (the grid chance
# level): every hit above that comes from looking at the image. The findings most often off
# the prior are {glue:text}`off_common` of their examined pairs, the least often
# {glue:text}`off_rare` (table): a large or long region, or one tied to an organ, can hardly lie
# outside the prior's mass, so the subset speaks mainly for small lung findings. Its
# regions cover {glue:text}`off_area`: small targets, where every hit is hard.

# %%
if off_hits:
    fig, axes = plt.subplots(1, max(1, len(off_show)), squeeze=False,
                             figsize=(6.8, 2.3))
    tops = offprior.top_mass_regions(prior)
    for c, i in enumerate(off_show):
        ax, lab = axes[0, c], off.pairs.table.label.iloc[i]
        ax.imshow(off.pixels.pixels[off.pairs.table.row.iloc[i]], cmap="gray")
        ax.imshow(off_maps[c], cmap="inferno", alpha=0.5, vmin=0, vmax=1)
        ax.contour(tops[lab], levels=[0.5], colors="#66c2a5", linewidths=1,
                   linestyles="--")
        ax.contour(off.pairs.masks[i], levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(f"{textwrap.fill(lab, 16)}\nhit {off_hits['ft'][i]:.2f}",
                     fontsize=9)
    for a in axes.ravel():
        a.set_axis_off()
else:
    fig, ax = plt.subplots(figsize=(6.8, 1.0))
    ax.text(0.5, 0.5, "no off-prior pairs in this profile", ha="center", va="center")
    ax.set_axis_off()
fig.tight_layout()
glue("fig_offprior", fig, display=False)
plt.close(fig)
mix.style.format({"off-prior share": "{:.0%}"})

# %% [markdown]
# ```{glue:figure} fig_offprior
# :name: fig-offprior
#
# Off-prior test pairs: the image with the fine-tuned model's Grad-CAM map (colour map
# *inferno*), the true region (white) and the location prior's top-mass region for that
# label (dashed green), each with its hit. The region lies outside the dashed outline by
# construction.
# ```

# %% [markdown]
# ## Layer by layer
#
# Grad-CAM at every layer position of the image tower (the `norm1` input of every block, then
# the tower's final norm), for the zero-shot, probe, fine-tuned and control settings: hit
# rate with its 95% CI, against the chance level (dotted) and the location prior (dashed).
# For a CLS-pooled tower nothing at the final norm but the CLS token reaches the score: every
# map there is degenerate and scores the chance level, which is why its Grad-CAM target is the
# last block's input; the control pools its patches and is read at the final norm.

# %%
fig, ax = plt.subplots(figsize=(6.8, 3.8))
positions = attribution.layer_positions(scorers["zs"])
for key in [k for k in ("zs", "lp", "ft", "control") if k in scorers]:
    rs = [layer_res[(key, str(b))] for b in range(len(positions))]
    y = np.array([r["hit_rate"] for r in rs])
    ci = np.array([r["hit_rate_ci"] for r in rs])
    ax.errorbar(np.arange(len(positions)), y, yerr=[np.maximum(y - ci[:, 0], 0),
                                                    np.maximum(ci[:, 1] - y, 0)],
                marker="o", capsize=3, label=NAMES[key])
ax.axhline(ref["uniform"]["chance"], color="grey", ls=":", label="chance level")
if prior is not None:
    ax.axhline(ref["location prior"]["hit_rate"], color="k", ls="--", lw=1,
               label="location prior")
ax.set_xticks(range(len(positions)), positions)
ax.set_xlabel("Grad-CAM target layer (a block's norm1 input, or the final norm)")
ax.set_ylabel("hit rate (test pairs)")
ax.legend(fontsize=9)
fig.tight_layout()
glue("fig_layers", fig, display=False)
plt.close(fig)
layer_table = pd.DataFrame({(NAMES[k], positions[int(b)]): row(r)
                            for (k, b), r in layer_res.items()}).T

# %% [markdown]
# ```{glue:figure} fig_layers
# :name: fig-layers
#
# Grad-CAM hit rate at every layer position, with 95% CIs, against the chance level and the
# location prior.
# ```
#
# Early blocks see edges and texture; the last block sees what the embedding is built from.
# The full table of every block (hit rate, mIoU, IoU@0.1, degenerate maps) is in the JSON
# this chapter writes.
#
# ## The human reference
#
# Where an annotation file names more than one reader, the readers' agreement on the pairs
# they both annotated is the human reference (CheXlocalize's human benchmark): the IoU of one
# reader's region with another's, and whether one reader's most representative point (the
# most interior point of the region) lies in the other's region.

# %%
human = None
rm = base.reader_masks
if rm:
    ag = regions.reader_agreement(rm)
    grp = base.table.report_id.to_numpy()[ag["pair"]]
    human = {}
    for k in ("hit", "iou"):
        v, lo, hi = bootstrap_stat(lambda i, a=ag[k]: float(a[i].mean()), grp, n_boot)
        human[k] = (v, [lo, hi])
    human["n"] = int(len(set(ag["pair"])))
    glue("human_ref", f"readers' hit rate {fmt(*human['hit'])}, inter-reader mIoU "
         f"{fmt(*human['iou'])} over {human['n']} pairs", display=False)
else:
    glue("human_ref", "no annotation file with several readers in this run",
         display=False)

# %% [markdown]
# Human reference: {glue:text}`human_ref`.
#
# ## Examples
#
# Test pairs with the true region outlined, and the maps of the fine-tuned model and of the
# positive control (Grad-CAM and Chefer et al.); the control's maps are drawn on the marked
# image it saw.

# %% tags=["hide-input"]
cols = [(k, m) for k in ("ft", "control") for m in ("gradcam", "chefer")
        if k in ex_maps]
tb = ex_pairs.table
fig, axes = plt.subplots(max(1, len(show)), 1 + len(cols),
                         figsize=(6.8, 0.5 + 1.75 * max(1, len(show))), squeeze=False)
for r, i in enumerate(show):
    img = np.asarray(study.pixels.pixels[tb.row.iloc[i]])
    axes[r, 0].imshow(img, cmap="gray")
    axes[r, 0].contour(ex_pairs.masks[i], levels=[0.5], colors="#1b9e77", linewidths=1)
    axes[r, 0].set_title(textwrap.fill(tb.label.iloc[i], 16), fontsize=9)
    for c, (k, m) in enumerate(cols, start=1):
        seen = PIX[k].pixels[tb.row.iloc[i]] if k in PIX else img
        axes[r, c].imshow(seen, cmap="gray")
        axes[r, c].imshow(ex_maps[k][m][r], cmap="inferno", alpha=0.5, vmin=0, vmax=1)
        axes[r, c].contour(ex_pairs.masks[i], levels=[0.5], colors="white",
                           linewidths=0.8)
        hit = res[(k, m)]["per_pair"]["hit_rate"][i]
        head = f"{NAMES[k]}\n{attribution.NAMES[m]}\n" if r == 0 else ""
        axes[r, c].set_title(f"{head}hit {hit:.2f}", fontsize=9)
for a in axes.ravel():
    a.set_axis_off()
fig.tight_layout()
glue("fig_examples", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_examples
# :name: fig-cam-examples
#
# Test pairs: the image with its true region (left), then maps of the fine-tuned model and
# of the positive control (colour map *inferno*: dark low, bright high; white outline: the
# true region), each with its hit.
# ```
#
# ## Verdicts
#
# Each verdict is a finding record ({mod}`helpers.analysis.findings`): a claim, its estimate with a
# 95% CI, a rule on the CI, and a negative control on the same report resamples. A finding
# holds when its own CI clears the rule *and* its paired difference from the control clears
# the margin declared in chapter 1, with a control powered to show that margin. All are read
# on Grad-CAM (the original study's method) and the hit rate; the scoring validation and the positive
# control's checks are validation checks, not findings (the results page leaves them out of
# the family that Holm's adjustment counts). "Beats the location prior" is decided on the
# off-prior pairs; its row on all test pairs, where the renderer favours the prior, is kept
# and labelled "(all test pairs)", an exploratory row outside the family.

# %%
recs = []
ref_pp = {k: ref[k]["per_pair"] for k in ref}
recs.append(findings.record(
    "scoring validated", CHAPTER, "the oracle map (blurred true region) hits above the "
    "chance level", versus(ref_pp["oracle"]["hit_rate"], ref_pp["oracle"]["chance"],
                           ref_pp["random grid"]["hit_rate"],
                           ref_pp["random grid"]["chance"], base),
    {"above": 0.0}, "a random grid map's hit minus its chance level", n=len(base)))
copies_ok = {k: not (rand_health[(k, 0)]["failed"] or rand_health[(k, 1)]["failed"])
             for k in scorers}
ALL_PAIRS = " (all test pairs)"
for key in scorers:
    g, h0, h1 = scored[key], rand_hits[(key, 0)], rand_hits[(key, 1)]
    if key in off_hits and copies_ok[key]:
        recs.append(findings.record(
            f"{key}: beats the location prior", CHAPTER,
            f"{NAMES[key]} Grad-CAM maps hit more often than the location prior on "
            "off-prior test pairs (lesions away from the prior's mass)",
            versus(off_hits[key], off_prior_hit, off_rand[(key, 0)], off_prior_hit,
                   off.pairs), {"above": 0.0},
            "its randomised copy against the location prior, on the same off-prior "
            "pairs",
            n=len(off.pairs), pairs="off-prior"))
    if prior is not None and copies_ok[key]:
        pri_maps = regions.prior_maps(prior, g.table.label, study.info.image_size)
        pri = regions.pointing_game(pri_maps, g.masks)
        recs.append(findings.record(
            f"{key}: beats the location prior{ALL_PAIRS}", CHAPTER,
            f"{NAMES[key]} Grad-CAM maps hit more often than the location prior on all "
            "test pairs, where lesions lie where the prior puts its mass",
            versus(hits(key), pri, h0, pri, g), {"above": 0.0},
            "its randomised copy against the location prior",
            margin=findings.declared(f"{key}: beats the location prior").margin,
            n=len(g), pairs="all test pairs"))
    if copies_ok[key]:
        recs.append(findings.record(
            f"{key}: model randomisation", CHAPTER,
            f"{NAMES[key]} Grad-CAM maps hit more often than its randomised copy's",
            versus(hits(key), h0, h1, h0, g), {"above": 0.0},
            "randomised copy (seed 1) against (seed 0)", n=len(g),
            final_spearman=sanity[key]["final Spearman"][0]))
if ft_perm is not None and copies_ok["ft"]:
    g, h0, h1 = scored["ft"], rand_hits[("ft", 0)], rand_hits[("ft", 1)]
    recs.append(findings.record(
        "ft: data randomisation", CHAPTER,
        "fine-tuned Grad-CAM maps hit more often than those of the model fine-tuned on "
        "permuted labels", versus(hits("ft"), hits("ft-permuted"), h1, h0, g),
        {"above": 0.0}, "randomised copy (seed 1) against (seed 0)", n=len(g)))
by_id = {r["finding"]: r for r in recs}


def say(fid):
    r = by_id.get(fid)
    if r is None:
        key = fid.split(":")[0]
        return ("not tested: a randomised copy failed its check" if key in copies_ok
                and not copies_ok[key] else "not tested in this profile")
    d = r["difference"]
    return (f"{r['verdict']} (estimate {fmt(r['estimate'], r['ci95'], signed=True)}; "
            f"minus its control {fmt(d['estimate'], d['ci95'], signed=True)}, margin "
            f"{r['margin']:g})")


glue("v_scoring", say("scoring validated"), display=False)
glue("v_data_rand", say("ft: data randomisation"), display=False)
for key in ("zs", "zs+", "lp", "ft", "control"):
    glue(f"v_{key}_prior", say(f"{key}: beats the location prior"), display=False)
    glue(f"v_{key}_prior_all", say(f"{key}: beats the location prior{ALL_PAIRS}"),
         display=False)
    glue(f"v_{key}_rand", say(f"{key}: model randomisation"), display=False)
ctrl_rec = by_id.get("control: beats the location prior")
prior_hit = ref["location prior"]["hit_rate"] if prior is not None else np.nan
passing = [f"{attribution.NAMES[m]} ({r['hit_rate']:.3f})" for (k, m), r in res.items()
           if k == "control" and r["hit_rate"] > prior_hit]
READINGS = {
    None: "no positive control in this profile: a failing setting cannot be told apart "
          "from a method that cannot show localisation",
    True: "the positive control's Grad-CAM maps beat the location prior on the "
          "off-prior pairs at this layer, so the method can show localisation here "
          "even where the usual place is no help, and a setting that fails is a "
          "statement about the setting",
    False: "the positive control's own Grad-CAM maps do not beat the location prior "
           "on the off-prior pairs by the margin over their randomised copy (the prior "
           "scores 0 there by construction, so the randomised copy is the bar that "
           "counts) at this layer: here Grad-CAM cannot show "
           "localisation even where it certainly exists, so the settings' Grad-CAM "
           "verdicts say nothing about where they look. On all test pairs, methods "
           f"whose control maps hit more often than the prior's {prior_hit:.3f} "
           "(point values): "
           + (", ".join(passing) or "none")}
glue("control_reading", READINGS[None if ctrl_rec is None else ctrl_rec["holds"]],
     display=False)
verdicts = findings.findings_table(findings.as_frame(recs, profile, study.info.id),
                                   with_model=False).drop(columns="after Holm")
findings.styled(verdicts)

# %% [markdown]
# **Read the positive control first:** {glue:text}`control_reading`.

# %%
def strip(r):
    return {k: v for k, v in r.items() if k != "per_pair"}


out = atomic_write_json(arts.grad_cam, {
    "stamp": stamp,
    "params": {"model": study.info.spec, "style": style, "limit": limit,
               "n_boot": n_boot, "max_pairs": max_pairs,
               "scorecam_pairs": scorecam_pairs,
               "cascade_pairs": cascade_pairs, "zero_shot_classifier": zs_name,
               "k_folds": k_folds, "min_tune_pairs": regions.MIN_TUNE_PAIRS,
               "threshold_grid": list(regions.THRESHOLD_GRID)},
    "pairs": {k: int(v) for k, v in n_table["pairs"].items()},
    "scoring_validation": {k: strip(r) for k, r in ref.items()},
    "settings": {f"{NAMES[k]} · {attribution.NAMES[m]}": strip(r)
                 for (k, m), r in res.items()},
    "layers": {f"{NAMES[k]} · {positions[int(b)]}": strip(r)
               for (k, b), r in layer_res.items()},
    "cascade": {f"{NAMES[k]} · {s} · {attribution.NAMES[m]}": v
                for (k, s, m), v in casc.items()},
    "cascade_health": {f"{NAMES[k]} · {st}": h for (k, st), h in casc_health.items()},
    "randomised_copies": {f"{NAMES[k]} · seed {sd}": h
                          for (k, sd), h in rand_health.items()},
    "native_grid": GRID, "cam_layer": LAYER,
    "off_prior": None if not off_hits else {
        "n_pairs": len(off.pairs), "n_rendered": off.n_rendered,
        "n_examined": off.n_examined, "top_mass": offprior.TOP_MASS,
        "examined_by_label": off.examined_by_label,
        "off_prior_by_label": off.found_by_label,
        "max_overlap": offprior.MAX_OVERLAP,
        "labels": off.pairs.table.label.value_counts().to_dict(),
        "location_prior_hit": float(off_prior_hit.mean()),
        "grid_chance": float(off_chance.mean()),
        "gradcam_hit": {NAMES[k]: float(v.mean()) for k, v in off_hits.items()},
        "randomised_hit": {f"{NAMES[k]} · seed {sd}": float(v.mean())
                           for (k, sd), v in off_rand.items()}},
    "control": None if control is None else control.record,
    "human_reference": human})
written = findings.write_findings(arts.findings(CHAPTER), recs, stamp)
print("wrote", display.output_name(out), "and", display.output_name(written),
      "in the output folder")

# %% [markdown]
# ## What it means, and what it cannot mean
#
# A verdict "holds" when its whole 95% CI clears the rule, its paired difference from its
# negative control clears the declared margin, and the control is powered.
# A setting that beats the location prior *and* its randomised copy has maps that use what
# the model learned to point at the finding. A setting that fails either has maps that do not
# show where its evidence is, or evidence that is not local: the two cannot be told apart
# from these scores alone, which is why the positive control matters. If the control passes,
# the methods and scores can detect localisation on these images; a failing setting is then
# a statement about the setting, not about the method. In `demo` the images are phantoms and
# the model is tiny: nothing here is a statement about BiomedCLIP. The phantoms place each
# lesion where radiologists' boxes put that finding, the positions the location prior is
# built from, so on the test pairs the prior is strong by construction and "beats the
# location prior" would be partly decided by the renderer; the verdict is therefore read on
# the off-prior pairs (§ Off the prior), with the all-test-pairs rows kept beside it and
# labelled. The off-prior pairs are selected from the renderer's own output, not drawn by a
# changed renderer: they are the tail of its position distribution, mostly small lung
# findings, and the findings that least often leave the prior's mass
# ({glue:text}`off_rare` of their examined pairs) are judged almost only by the
# all-test-pairs row, with the renderer's thumb on the scale. The hit rate rewards the map's
# single maximum and ignores the rest of the map; mIoU depends on the threshold rule and is
# small for thin findings whatever the map does.
#
# ## Summary
#
# - Scoring validated: {glue:text}`v_scoring`.
# - Positive control beats the location prior on off-prior pairs:
#   {glue:text}`v_control_prior`; on all test pairs: {glue:text}`v_control_prior_all`; its
#   model randomisation check: {glue:text}`v_control_rand`.
# - Zero-shot ({glue:text}`zs_name`) against the location prior on off-prior pairs:
#   {glue:text}`v_zs_prior`; on all test pairs: {glue:text}`v_zs_prior_all`; against its
#   randomised copy: {glue:text}`v_zs_rand`.
# - Zero-shot, positive prompt only, against the prior on off-prior pairs:
#   {glue:text}`v_zs+_prior`; on all test pairs: {glue:text}`v_zs+_prior_all`; against its
#   randomised copy: {glue:text}`v_zs+_rand`.
# - Linear probe against the prior on off-prior pairs: {glue:text}`v_lp_prior`; on all test
#   pairs: {glue:text}`v_lp_prior_all`; against its randomised copy: {glue:text}`v_lp_rand`.
# - Fine-tuned against the prior on off-prior pairs: {glue:text}`v_ft_prior`; on all test
#   pairs: {glue:text}`v_ft_prior_all`; against its randomised copy:
#   {glue:text}`v_ft_rand`; data randomisation (permuted labels): {glue:text}`v_data_rand`.
# - Degenerate maps: {glue:text}`n_degenerate_total`, each scored at its chance level.
#
# ## What's next
#
# The {doc}`07_results` page gathers every chapter's numbers and findings beside the original study's.
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
u = ref["uniform"]["per_pair"]
print("largest |hit − chance| of the uniform map:",
      float(np.abs(u["hit_rate"] - u["chance"]).max()))
flat0 = np.zeros((1, base.masks.shape[-1] ** 2)).argmax(1)
print("argmax of an all-zero map is pixel", int(flat0[0]),
      "(the top-left corner): inside the region for",
      int(base.masks.reshape(len(base), -1)[:, 0].sum()), "of", len(base), "pairs")

# %% [markdown]
# Every pixel of a constant map ties for the maximum, so the tie rule spreads the hit over the
# whole image: its expected value is the area fraction. `argmax` returns the first pixel, the
# top-left corner, which is almost never inside a finding: such maps would score 0, a "miss"
# produced by array order, not by the map.
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
key = "control" if "control" in scorers else "ft"
tk = scored[key].table
multi = tk.groupby("image_id").filter(lambda d: len(d) > 1).index.to_numpy()
for m in ("gradcam", "eigencam", "rollout"):
    h = res[(key, m)]["per_pair"]["hit_rate"]
    img_of = tk.image_id.to_numpy()[multi]
    every = pd.Series(h[multi] > 0.5).groupby(img_of).all()
    print(f"{NAMES[key]} · {attribution.NAMES[m]}: {len(every)} images with "
          f"several findings, every finding hit on {every.mean():.2f} of them")

# %% [markdown]
# A class-agnostic map has one maximum per image, so it can point at one finding at most:
# with two findings in different places it must miss one of them, and it hits every finding
# only where they overlap. A label-specific method can point at each finding in turn.
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
for key in [k for k in ("ft", "control") if k in scorers]:
    area = regions.area_fraction(scored[key].masks)
    small = area < np.median(area)
    h = res[(key, "gradcam")]["per_pair"]["hit_rate"]
    hp = (ref["location prior"]["per_pair"]["hit_rate"] if prior is not None
          else np.zeros_like(h))
    for name, sel in (("small", small), ("large", ~small)):
        print(f"{NAMES[key]:>18} · {name} regions: hit {h[sel].mean():.3f}, "
              f"prior {hp[sel].mean():.3f}, area {area[sel].mean():.3f}")
    small_gain[key] = float(h[small].mean() - hp[small].mean())
glue("small_gain", "; ".join(f"{NAMES[k]} {v:+.3f}" for k, v in small_gain.items())
     or "no setting to compare", display=False)
glue("small_winner", NAMES[max(small_gain, key=small_gain.get)] if small_gain
     else "neither", display=False)

# %% [markdown]
# On small regions the chance level and the prior are low, so any gain there comes from
# looking at the image. Hit rate minus the prior's on the small half, Grad-CAM:
# {glue:text}`small_gain`; the larger gain is the {glue:text}`small_winner`'s. A model that
# only learned where findings usually are gains nothing on small regions; a negative gain
# means its maps do worse there than knowing the usual place.
#
# ```{solution-end}
# ```
