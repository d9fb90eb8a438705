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
# # 6. Where does the model look? Grad-CAM, checked against the truth
#
# ## Overview
#
# **The question.** A saliency map is only an explanation if it points at the finding. The seed
# study {cite}`sadman2025interpreting` shows Grad-CAM maps and judges them by eye; here they are
# *scored* against ground-truth regions, CheXlocalize-style {cite}`saporta2022chexlocalize`, for
# the three settings, two saliency methods, several depths of the network, and a
# model-randomisation sanity check {cite}`adebayo2018sanity`.
#
# You will learn how Grad-CAM applies to a vision transformer and to image-text similarity, how to
# score a saliency map against a ground-truth region, which baselines a map must beat, and how to
# check that a map explains the model rather than the architecture.
#
# ## Prerequisites
#
# - {doc}`03_linear_probe` and {doc}`04_fine_tune`: their probe and model are explained here.
# - {term}`Grad-CAM`, {term}`Pointing game`, {term}`IoU`, {term}`Hit rate`.
#
# ## Method
#
# Grad-CAM {cite}`selvaraju2017gradcam` weights the activations $A^c$ of a layer by
# the spatially averaged gradient of the score $s$ and keeps the positive part,
#
# $$ M = \mathrm{ReLU}\Big(\sum_c \alpha_c A^c\Big), \qquad
#    \alpha_c = \frac{1}{g^2}\sum_{u,v} \frac{\partial s}{\partial A^c_{uv}} , $$ (eq-gradcam)
#
# {eq}`eq-gradcam` on the $g \times g$ patch-token grid of a ViT block (the CLS token dropped), upsampled to the
# image and scaled to $[0, 1]$; Grad-CAM++ {cite}`chattopadhay2018gradcampp` uses higher-order
# gradient weights. The score $s$ is, for zero-shot, the decision of chapter 2's paired prompts,
# $\cos(u, v^+) - \cos(u, v^-)$ (the image's similarity with "cardiomegaly" minus that with "no
# cardiomegaly"), and, as the seed does, the similarity with the positive prompt alone; for the
# linear probe, the probe's logit through the frozen encoder; for the
# fine-tuned model, its label logit. For every test image and each of its positive labels:
#
# * **pointing game**: 1 if the map's maximum lies inside the true region;
# * **IoU** of the thresholded map $\{M \ge t\}$ with the region, $t$ chosen on *validation* pairs;
# * **hit**: IoU $\ge 0.1$, the most lenient of ChestX-ray8's localisation thresholds
#   {cite}`wang2017chestxray8`.
#
# A **location prior** serves as the reference a map must beat: for each label the average of its
# training regions, the same map for every image (it knows where a finding *usually* is, without
# looking). In the `demo` profile the regions are the phantoms' exact masks; in `full`, the
# radiologist annotations described in {doc}`../reproducing`.

# %% tags=["parameters"]
profile = "demo"  # demo or full
model = ""  # model spec; empty uses the profile's (tiny or biomedclip)
style = "target"  # demo only: phantom style of the IU-Xray images
limit = 0  # at most this many images per split (0: all); for quick runs
on_error = "stop"  # an unreadable image: "stop" (naming it) or "skip" (counted in the stamp)
n_boot = 200  # bootstrap resamples (by report) for confidence intervals
max_pairs = 300  # at most this many (image, label) pairs per split (0: all)
n_examples = 4  # example figures
annotations = ""  # full profile: annotation CSV (empty: the shipped example in annotations/)

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue

from helpers import cam as C
from helpers import probe as P
from helpers import zeroshot as Z
from helpers.io import atomic_write_json
from helpers.stamp import show_stamp
from helpers.runs import finetuned_scorer
from helpers.study import load_study, localization_pairs

study = load_study(profile, model or None, style=style, limit=limit or None, on_error=on_error)
LABELS = study.labels
stamp = study.stamp()
show_stamp(stamp)
S = study.info.image_size
pairs = {s: localization_pairs(study, s, max_pairs or None, annotations or None) for s in ("val", "test")}
glue("n_test_pairs", len(pairs["test"]), display=False)
pairs["test"].table.label.value_counts().rename("test pairs").to_frame().T

# %% [markdown]
# ## The three settings, two methods, and the sanity check

# %%
probe = P.load_probe(study.artefacts.probe())
ft = finetuned_scorer(study)
zs_pos = study.text_embeddings([Z.prompts(c)[0][0] for c in LABELS])
zs_neg = study.text_embeddings([Z.prompts(c)[1][0] for c in LABELS])
visual = study.model.visual
scorers = {
    "zero-shot": C.EmbeddingScorer(visual, C.zero_shot_head(zs_pos, zs_neg)),
    "zero-shot, positive prompt only": C.EmbeddingScorer(visual, C.zero_shot_head(zs_pos)),
    "linear probe": C.EmbeddingScorer(visual, probe.torch_logits),
    "fine-tuned": C.EmbeddingScorer(ft.clip.visual, C.finetuned_head(ft)),
    "randomised (fine-tuned head)": C.EmbeddingScorer(C.randomized_copy(ft.clip.visual), C.finetuned_head(ft)),
}
lab_idx = {s: np.array([LABELS.index(c) for c in p.table.label], dtype=int) for s, p in pairs.items()}


def score(scorer, method="gradcam", block=-1):
    m = {s: C.compute_maps(scorer, study.pixels, p.table.row.to_numpy(), lab_idx[s], study.info.mean,
                           study.info.std, block=block, method=method, progress=False) for s, p in pairs.items()}
    t = C.choose_threshold(m["val"], pairs["val"].masks)
    return C.localization(m["test"], pairs["test"].masks, t, pairs["test"].table.report_id, n_boot), m["test"]


runs, maps = {}, {}
for name, sc in scorers.items():
    for method in C.METHODS if name in ("zero-shot", "fine-tuned") else ("gradcam",):
        runs[(name, method)], maps[(name, method)] = score(sc, method)
prior = C.location_prior(localization_pairs(study, "train", 2000), pairs["val"], pairs["test"], n_boot)
if prior is not None:
    runs[("location prior", "-")] = prior


def fmt(r, k):
    return f"{r[k]:.3f} [{r[k + '_ci'][0]:.3f}, {r[k + '_ci'][1]:.3f}]"


table = pd.DataFrame({f"{n} · {m}": {"pointing game": fmt(r, "pointing"), "IoU": fmt(r, "iou"),
                                      "hit rate (IoU ≥ 0.1)": fmt(r, "hit"), "threshold (val)": r["threshold"]}
                      for (n, m), r in runs.items()}).T
ft_pg, rnd_pg = runs[("fine-tuned", "gradcam")]["pointing"], runs[("randomised (fine-tuned head)", "gradcam")]["pointing"]
sanity = bool(runs[("randomised (fine-tuned head)", "gradcam")]["pointing_ci"][1]
              < runs[("fine-tuned", "gradcam")]["pointing_ci"][0])
glue("pg_ft", f"{ft_pg:.3f}", display=False)
glue("pg_rnd", f"{rnd_pg:.3f}", display=False)
glue("pg_zs", f"{runs[('zero-shot', 'gradcam')]['pointing']:.3f}", display=False)
glue("pg_zs_pos", f"{runs[('zero-shot, positive prompt only', 'gradcam')]['pointing']:.3f}", display=False)
glue("pg_prior", f"{prior['pointing']:.3f}" if prior else "(no training regions in this profile)",
     display=False)
glue("sanity_verdict", "passes" if sanity else "does not pass", display=False)
table

# %% [markdown]
# Over {glue:text}`n_test_pairs` test pairs, Grad-CAM's pointing game is {glue:text}`pg_zs` for
# zero-shot and {glue:text}`pg_ft` for the fine-tuned model, against {glue:text}`pg_prior` for the
# location prior that never looks at the image. With the image tower's weights re-drawn at
# random, the fine-tuned head's maps score {glue:text}`pg_rnd`: the sanity check
# **{glue:text}`sanity_verdict`** (it passes when the randomised model's CI lies entirely below
# the trained one's). A map that survives randomisation explains the architecture, not the model.
#
# Explaining the similarity with the positive prompt alone, as the seed does, scores
# {glue:text}`pg_zs_pos`. A single similarity also rewards whatever every chest X-ray prompt has in
# common ("an X-ray of a chest"); the paired decision subtracts the negative prompt's similarity,
# which cancels that shared part and leaves what tells "cardiomegaly" from "no cardiomegaly".
#
# ## Per label

# %%
per = pd.DataFrame({f"{n} · {m}": pd.Series(r["per_pair"]["pointing"]).groupby(pairs["test"].table.label.to_numpy()).mean()
                    for (n, m), r in runs.items() if m in ("gradcam", "-")})
ax = per.plot.barh(figsize=(7, 5))
ax.set_xlabel("pointing game (test)")
ax.invert_yaxis()
ax.legend(fontsize=7)
ax.set_title("Pointing game per label")
plt.tight_layout()
glue("fig_pointing_per_label", ax.figure, display=False)
plt.close(ax.figure)

# %% [markdown]
# ```{glue:figure} fig_pointing_per_label
# :name: fig-pointing-per-label
#
# Pointing game per label on test pairs (Grad-CAM for each setting, and the location prior).
# ```
#
# Compare, in {numref}`fig-pointing-per-label`, large findings (an enlarged heart, an effusion)
# with thin or small ones (a fracture, a nodule, a line): a map one patch wide can land inside a
# large region by luck far more often than inside a small one.
#
# ## Depth: Grad-CAM at shallow, middle and deep blocks
#
# Early blocks see edges and texture; the last block sees what the embedding is built from. The
# fine-tuned model's maps at several depths:

# %%
depth = len(ft.clip.visual.trunk.blocks)
blocks = sorted({0, depth // 2, depth - 1})
layer_runs = {b: score(scorers["fine-tuned"], "gradcam", b)[0] for b in blocks}
pd.DataFrame({f"block {b} of {depth}": {"pointing game": fmt(r, "pointing"), "IoU": fmt(r, "iou"),
                                        "hit rate": fmt(r, "hit")} for b, r in layer_runs.items()}).T

# %% [markdown]
# ## Examples
#
# Test images with one positive finding each: the image, the true region, and the Grad-CAM maps
# of the zero-shot and fine-tuned models.

# %%
tp, tmask = pairs["test"].table, pairs["test"].masks
show = np.random.default_rng(0).choice(len(tp), min(n_examples, len(tp)), replace=False)
fig, axes = plt.subplots(len(show), 3, figsize=(7.5, 2.6 * len(show)), squeeze=False)
for r, i in enumerate(show):
    img = np.asarray(study.pixels.pixels[tp.row.iloc[i]])
    axes[r, 0].imshow(img, cmap="gray")
    axes[r, 0].contour(tmask[i], levels=[0.5], colors="#1b9e77", linewidths=1)
    axes[r, 0].set_title(f"{tp.label.iloc[i]} (true region)", fontsize=8)
    for c, key in enumerate([("zero-shot", "gradcam"), ("fine-tuned", "gradcam")], start=1):
        axes[r, c].imshow(img, cmap="gray")
        axes[r, c].imshow(maps[key][i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[r, c].contour(tmask[i], levels=[0.5], colors="white", linewidths=0.8)
        axes[r, c].set_title(f"{key[0]}: pointing {runs[key]['per_pair']['pointing'][i]:.0f}", fontsize=8)
for a in axes.ravel():
    a.set_axis_off()
fig.tight_layout()
glue("fig_cam_examples", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_cam_examples
# :name: fig-cam-examples
#
# Test images with the true region outlined (left), and Grad-CAM maps of the zero-shot (middle)
# and fine-tuned (right) models, with each map's pointing-game outcome.
# ```
#
# {numref}`fig-cam-examples` shows what the numbers summarise, one image at a time.

# %%
out = atomic_write_json(study.artefacts.grad_cam, {
    "stamp": stamp, "params": {"model": model or None, "style": style, "limit": limit, "n_boot": n_boot,
                               "max_pairs": max_pairs},
    "settings": {f"{n} · {m}": {k: v for k, v in r.items() if k != "per_pair"} for (n, m), r in runs.items()},
    "layers": {str(b): {k: v for k, v in r.items() if k != "per_pair"} for b, r in layer_runs.items()},
    "sanity_check_passes": sanity})
print(out)

# %% [markdown]
# ## Summary
#
# - Saliency maps are scored, not only shown: pointing game, IoU and hit rate with confidence
#   intervals, against a location prior and a randomised model.
# - Whether fine-tuning moves the maps onto the findings is read off the table above, label by
#   label, on this run's numbers.
#
# ## What's next
#
# The {doc}`07_results` page gathers every chapter's numbers beside the seed's.
#
# ## Exercises
#
# :::{exercise}
# :label: ex-cam-prior
#
# The location prior never looks at the image, yet it can score well. Why, and why is it the
# right baseline for the pointing game on chest X-rays?
# :::
#
# :::{solution} ex-cam-prior
# :class: dropdown
#
# Many findings sit in predictable places (the heart in the lower middle, effusions at the
# costophrenic angles). A map that only encodes "where this finding usually is" scores well
# without using the image. A saliency method earns credit only for what it adds beyond that prior.
# :::
#
# :::{exercise}
# :label: ex-cam-sanity
#
# What would it mean if the randomised model's maps scored as well as the trained model's?
# :::
#
# :::{solution} ex-cam-sanity
# :class: dropdown
#
# The maps would then depend on the architecture and the input (edges, bright regions), not on
# what the model learned: such maps cannot explain the model's decisions (Adebayo et al.).
# :::
#
# :::{exercise}
# :label: ex-cam-grid
#
# The tiny demo model sees a 10 × 10 grid of patches, BiomedCLIP a 14 × 14 one. How does the grid
# limit the IoU a Grad-CAM map can reach for a small nodule?
# :::
#
# :::{solution} ex-cam-grid
# :class: dropdown
#
# The map is computed per patch and upsampled, so its smallest blob is about one patch wide (16
# pixels of the model's input). A nodule a few pixels across is much smaller: even a perfectly
# placed map covers mostly healthy lung, and the IoU stays low. The pointing game is less
# sensitive to this than IoU.
# :::
