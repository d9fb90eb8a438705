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
# # 5. The embedding space
#
# ## Overview
#
# **The question.** Chapters 2-4 measured *what* each protocol achieves. Here we look at *why*,
# in the geometry of the image embeddings: are the classes further apart, relative to their
# spread, after fine-tuning? The seed study {cite}`sadman2025interpreting` reports the
# inter-/intra-class distance ratio rising from zero-shot to fine-tuned (its values are in the
# {doc}`07_results` table).
#
# You will learn precise definitions of class distances for multi-label data, how to put a
# confidence interval on them, and how (not) to read UMAP and t-SNE pictures.
#
# ## Prerequisites
#
# - {doc}`04_fine_tune`: this chapter loads its fine-tuned model.
# - {term}`Inter-class distance`, {term}`Intra-class distance`.
#
# ## Definitions
#
# For raw (unnormalised) image embeddings $e_i$ of the test images and the 14
# labels, an image counts toward *every* class it is positive for. With the centroid
# $c_j = \frac{1}{|C_j|}\sum_{i \in C_j} e_i$ of class $C_j = \{i : y_{ij} = 1\}$,
#
# $$ \mathrm{intra}_j = \frac{1}{|C_j|}\sum_{i \in C_j} \lVert e_i - c_j \rVert_2 , \qquad
#    \mathrm{inter} = \binom{k'}{2}^{-1} \sum_{j < l} \lVert c_j - c_l \rVert_2 , \qquad
#    \mathrm{ratio} = \frac{\mathrm{inter}}{\frac{1}{k'}\sum_j \mathrm{intra}_j} , $$ (eq-ratio)
#
# over the $k'$ classes with at least five test images {eq}`eq-ratio`. Distances carry each model's scale; the
# ratio is scale-free and is the number to compare. The linear probe does not change the
# encoder, so its embedding space *is* the zero-shot one: its distances are identical by
# construction (the seed's 31.894 vs 31.890 can only be numerical noise).

# %% tags=["parameters"]
profile = "demo"  # demo or full
model = ""  # model spec; empty uses the profile's (tiny or biomedclip)
style = "target"  # demo only: phantom style of the IU-Xray images
limit = 0  # at most this many images per split (0 = all); for quick runs
on_error = "stop"  # an unreadable image: "stop" (naming it) or "skip" (counted in the stamp)
n_boot = 200  # bootstrap resamples (by report) for confidence intervals
projection_points = 1000  # at most this many test images in the UMAP / t-SNE plots
highlight = ["No Finding", "Cardiomegaly", "Pleural Effusion", "Lung Opacity", "Support Devices"]  # colours

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue

from helpers import geometry as G
from helpers import results as R
from helpers.config import output_dir
from helpers.io import atomic_write_json
from helpers.stamp import show_stamp
from helpers.study import embeddings_of, finetuned_scorer, load_study

study = load_study(profile, model or None, style=style, limit=limit or None, on_error=on_error)
LABELS = study.labels
stamp = study.stamp()
show_stamp(stamp)
test = study.rows("test")
yt = study.y(test)
groups = study.groups(test)
emb = {"zs": study.image_embeddings()[test]}
emb["lp"] = emb["zs"]  # frozen encoder: the probe's embedding space is the zero-shot one
emb["ft"] = embeddings_of(study, finetuned_scorer(study).clip)[test]
print({k: v.shape for k, v in emb.items()})

# %% [markdown]
# ## Distances, with confidence intervals

# %%
geo = {"zs": G.geometry_with_ci(emb["zs"], yt, groups, LABELS, n_boot)}
geo["lp"] = geo["zs"]
geo["ft"] = G.geometry_with_ci(emb["ft"], yt, groups, LABELS, n_boot)
names = {"zs": "zero-shot", "lp": "linear probe", "ft": "fine-tuned"}
tab = pd.DataFrame({names[s]: {m: f"{g[m]:.3f} [{g[m + '_ci'][0]:.3f}, {g[m + '_ci'][1]:.3f}]"
                               for m in ("inter", "intra", "ratio")} for s, g in geo.items()}).T
ref = pd.DataFrame({f"{names[s]} (seed, BiomedCLIP)": {m: f"{R.SEED_REFERENCE[s][m]:.3f}"
                                                      for m in ("inter", "intra", "ratio")} for s in geo}).T
glue("ratio_zs", f"{geo['zs']['ratio']:.3f}", display=False)
glue("ratio_ft", f"{geo['ft']['ratio']:.3f}", display=False)
pd.concat([tab, ref])

# %%
from helpers.metrics import paired_difference  # noqa: E402

d, lo, hi = paired_difference(lambda i: G.class_geometry(emb["ft"][i], yt[i])["ratio_all"],
                              lambda i: G.class_geometry(emb["zs"][i], yt[i])["ratio_all"], groups, n_boot)
rises = bool(lo > 0)
glue("ratio_diff", f"{d:+.3f}", display=False)
glue("ratio_diff_ci", f"[{lo:+.3f}, {hi:+.3f}]", display=False)
glue("ratio_verdict", "rises" if rises else ("falls" if hi < 0 else "does not change measurably"),
     display=False)

per = pd.DataFrame({names[s]: {c: v["ratio"] for c, v in geo[s]["per_label"].items()} for s in ("zs", "ft")})
fig, ax = plt.subplots(figsize=(6, 5))
if per.empty:
    ax.text(0.5, 0.5, "no label has five or more test images in this run", ha="center", va="center")
    ax.set_axis_off()
else:
    per.plot.barh(ax=ax, color=["#d95f02", "#1b9e77"])
    ax.set_xlabel("inter / intra ratio of the class (test)")
    ax.invert_yaxis()
ax.set_title("Per-label distance ratio")
fig.tight_layout()
glue("fig_ratio_per_label", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_ratio_per_label
# :name: fig-ratio-per-label
#
# Inter/intra distance ratio of each label's class (test images), frozen encoder and fine-tuned.
# ```
#
# The overall ratio goes from {glue:text}`ratio_zs` (zero-shot) to {glue:text}`ratio_ft`
# (fine-tuned), a change of {glue:text}`ratio_diff` (paired bootstrap 95% CI
# {glue:text}`ratio_diff_ci`): on this run the ratio **{glue:text}`ratio_verdict`** with fine-tuning.
# A higher ratio means the class centroids moved apart relative to how widely each class
# scatters: the encoder now spends its dimensions on what tells the labels apart, which is what
# lets a simple rule on top (the paired prompts) separate them. The ratio summarises centroids,
# not decision boundaries, so it can move less than AUROC does (or the other way round): per
# label, {numref}`fig-ratio-per-label` shows where the change happens.
#
# ## Projections
#
# UMAP {cite}`mcinnes2018umap` and t-SNE {cite}`vandermaaten2008tsne` place the test images in
# two dimensions, coloured by the rarest highlighted label each image has (images with none of
# them: "other"). Projections keep neighbourhoods, not distances: read clusters, not gaps.

# %%
import umap  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

rng = np.random.default_rng(0)
pick = np.sort(rng.choice(len(test), min(projection_points, len(test)), replace=False))
colour = G.primary_label(yt[pick], LABELS, highlight)
palette = dict(zip(list(highlight) + ["other"], ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#cccccc"]))
fig, axes = plt.subplots(2, 2, figsize=(9, 8))
for r, s in enumerate(("zs", "ft")):
    x = emb[s][pick] / np.linalg.norm(emb[s][pick], axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proj = {"UMAP": umap.UMAP(n_neighbors=15, random_state=0, n_jobs=1).fit_transform(x),
                "t-SNE": TSNE(perplexity=min(30, len(x) - 1), random_state=0, init="pca").fit_transform(x)}
    for c, (pname, p) in enumerate(proj.items()):
        ax = axes[r, c]
        for lab in ["other", *highlight]:
            m = colour == lab
            ax.scatter(p[m, 0], p[m, 1], s=5, c=palette[lab], label=lab, alpha=0.8 if lab != "other" else 0.4)
        ax.set_title(f"{pname}, {names[s]}")
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].legend(fontsize=7, markerscale=2)
fig.tight_layout()
glue("fig_projections", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_projections
# :name: fig-projections
#
# UMAP (left) and t-SNE (right) of test-image embeddings before (top) and after (bottom)
# fine-tuning, coloured by the rarest highlighted label each image has.
# ```
#
# In {numref}`fig-projections`, look for whether images with findings gather apart from the normal
# ones after fine-tuning; the ratio above is the quantitative version of that impression.

# %%
out = atomic_write_json(output_dir(profile) / R.GEOMETRY_FILE, {
    "stamp": stamp, "params": {"model": model or None, "style": style, "limit": limit, "n_boot": n_boot},
    "settings": geo, "ratio_change_ft_minus_zs": {"value": d, "ci95": [lo, hi], "rises": rises}})
print(out)

# %% [markdown]
# ## Summary
#
# - With the seed's definitions, stated above, the inter/intra ratio is {glue:text}`ratio_zs` for
#   the frozen encoder (zero-shot and linear probe alike) and {glue:text}`ratio_ft` after
#   fine-tuning.
# - The results page puts these distances beside the seed's.
#
# ## What's next
#
# {doc}`06_grad_cam` asks where in the image each model looks, and checks it against the true
# lesion regions.
#
# ## Exercises
#
# :::{exercise}
# :label: ex-geo-scale
#
# Multiply every embedding by 10. What happens to the inter- and intra-class distances and to
# the ratio {eq}`eq-ratio`? Why is only the ratio comparable between two different models?
# :::
#
# :::{solution} ex-geo-scale
# :class: dropdown
#
# Both distances are multiplied by 10; the ratio is unchanged. Two models' embeddings have
# arbitrary, different scales (a fine-tuned model can change its norms), so absolute distances
# do not compare, while the ratio does.
# :::
#
# :::{exercise}
# :label: ex-geo-multilabel
#
# An image with both Cardiomegaly and Edema counts toward both classes. How does that pull the
# two centroids, and what does it do to the inter-class distance of co-occurring labels?
# :::
#
# :::{solution} ex-geo-multilabel
# :class: dropdown
#
# Shared members pull both centroids towards the same images, so labels that often co-occur end
# up with close centroids and a small inter-class distance, even if the encoder separates the
# findings well. The ratio mixes separation with the label structure of the data set.
# :::
#
# :::{exercise}
# :label: ex-geo-umap
#
# Re-run with `-p projection_points 300`. Do the UMAP clusters keep their shape? What does this
# say about reading distances between clusters in a projection?
# :::
#
# :::{solution} ex-geo-umap
# :class: dropdown
#
# Cluster layout and spacing change with the sample and the random state; only neighbourhoods are
# (approximately) preserved. Distances between clusters in UMAP or t-SNE carry little meaning,
# which is why the chapter measures distances in the original space.
# :::
