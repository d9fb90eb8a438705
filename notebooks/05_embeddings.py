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
# **The question.** Chapters 2-4 measured *what* each protocol achieves. Here we look at
# *why*, in the geometry of the image embeddings: are the classes further apart, relative to
# their spread, after fine-tuning? The original study {cite}`sadman2025interpreting` reports the
# inter-/intra-class distance ratio rising from zero-shot to fine-tuned (its values are in
# the {doc}`07_results` table).
#
# **Objectives.** By the end of this chapter you will be able to
#
# 1. define class distances for multi-label data precisely and compute them (§ Definitions);
# 2. put a confidence interval on them that covers test resampling and training seeds
#    (§ Distances);
# 3. test whether the ratio rises beside a model fine-tuned on permuted labels (§ Finding 4);
# 4. read (and not over-read) UMAP and t-SNE pictures (§ Projections).
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# |---|---|---|
# | {doc}`04_fine_tune` | Necessary | this chapter loads its fine-tuned models |
# | {term}`Inter-class distance`, {term}`Intra-class distance` | Necessary | {doc}`../glossary` |
# | Euclidean norm, centroids | Necessary | |
#
# **Time to learn**: 25 minutes.
#
# ## Definitions
#
# For raw (unnormalised) image embeddings $e_i$ of the test images and the 14 labels, an
# image counts toward *every* class it is positive for. With the centroid
# $c_j = \frac{1}{|C_j|}\sum_{i \in C_j} e_i$ of class $C_j = \{i : y_{ij} = 1\}$,
#
# $$ \mathrm{intra}_j = \frac{1}{|C_j|}\sum_{i \in C_j} \lVert e_i - c_j \rVert_2 , \qquad
#    \mathrm{inter} = \binom{k'}{2}^{-1} \sum_{j < l} \lVert c_j - c_l \rVert_2 , \qquad
#    \mathrm{ratio} = \frac{\mathrm{inter}}{\frac{1}{k'}\sum_j \mathrm{intra}_j} ,
# $$ (eq-ratio)
#
# over the $k'$ classes with at least five test images, a set fixed once on the whole test
# split. In code:
#
# ```{literalinclude} ../../helpers/analysis/geometry.py
# :pyobject: class_geometry
# ```
#
# Distances carry each model's scale; the ratio is scale-free and is the number to compare.
# The linear probe does not change the encoder, so its embedding space *is* the zero-shot
# one: its distances are identical by construction (the original study's 31.894 vs 31.890 can only be
# numerical noise). In a bootstrap replicate an image drawn twice counts twice in a centroid
# but once toward a class's size; a replicate in which a class of the set has fewer than two
# distinct images is dropped (the table reports how many).
#
# These intervals are percentiles of a statistic that is biased in small classes: a centroid
# of few images is noisy, which pushes centroid distances up, and a spread measured around
# the same few images comes out small. A replicate has fewer distinct images than the test
# split, so its inter-class distances tend to be larger and its spreads smaller than the
# point value, and the point value can sit near one end of its interval. Read the absolute
# distances with that in mind; the comparisons between settings below are paired
# differences of the ratio on the same replicates, where this bias is shared by both sides.

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
projection_points = 1000  # at most this many test images in the UMAP / t-SNE plots
highlight = ["No Finding", "Cardiomegaly", "Pleural Effusion", "Lung Opacity",
             "Support Devices"]  # labels coloured in the projections

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue

from helpers.analysis import findings, geometry, metrics
from helpers.analysis.estimate import Estimate
from helpers.book import artefacts, display, results
from helpers.book.stamp import show_stamp
from helpers.book.study import load_study
from helpers.protocols import repeats

study = load_study(profile, model, image_dir=image_dir, style=style,
                   uncertain_policy=uncertain_policy, split_seed=split_seed,
                   split_fractions=split_fractions, views=views,
                   reports_path=reports_path, limit=limit, on_error=on_error)
arts = study.artefacts
LABELS = study.labels
stamp = study.stamp()
show_stamp(stamp)
test = study.rows("test")
yt = study.y(test)
groups = study.groups(test)
emb = {"zs": [study.image_embeddings()[test]]}
emb["lp"] = emb["zs"]  # frozen encoder: the probe's space is the zero-shot one
emb["ft"] = repeats.finetuned_embeddings(study, test)
emb["ft (permuted)"] = repeats.finetuned_embeddings(study, test, variant="permuted")
print({k: f"{len(v)} seed(s) x {v[0].shape}" for k, v in emb.items()})

# %% [markdown]
# ## Distances, with confidence intervals
#
# For the fine-tuned model the point values are means over its training seeds, and every
# bootstrap replicate also resamples the seeds with replacement and averages over them: the
# intervals cover test resampling and are for the mean over seeds (with a handful of seeds, a
# sensitivity check rather than an estimate of the seed variance).

# %%
geo = {s: geometry.geometry_with_ci(emb[s], yt, groups, LABELS, n_boot)
       for s in ("zs", "ft", "ft (permuted)")}
geo["lp"] = geo["zs"]
names = {"zs": "zero-shot", "lp": "linear probe", "ft": "fine-tuned",
         "ft (permuted)": "fine-tuned on permuted labels"}
tab = pd.DataFrame({names[s]: {**{m: Estimate.read(g, m).format()
                                  for m in ("inter", "intra", "ratio")},
                               "replicates dropped": f"{g['dropped']} of {g['n_boot']}"}
                    for s, g in geo.items()}).T
ref = pd.DataFrame({f"{names[s]} (original paper, BiomedCLIP)":
                    {m: f"{results.SEED_REFERENCE[s][m]:.3f}"
                     for m in ("inter", "intra", "ratio")}
                    for s in ("zs", "lp", "ft")}).T
glue("ratio_zs", Estimate.read(geo["zs"], "ratio").format(), display=False)
glue("ratio_ft", Estimate.read(geo["ft"], "ratio").format(), display=False)
glue("n_classes", len(geo["zs"]["classes"]), display=False)
pd.concat([tab, ref]).fillna("")

# %% [markdown]
# ## Finding 4: does the ratio rise with fine-tuning?
#
# The finding is the paired difference ratio(fine-tuned) − ratio(zero-shot) on the same
# test images, its interval covering test resampling and the fine-tuning seeds. **Negative
# control**: the same difference for the models fine-tuned on permuted labels. Any change
# that training on meaningless labels produces too (a general contraction or stretching of
# the space) is not separation of the findings.

# %%
ratio = {s: geometry.ratio_fn(emb[s], yt) for s in ("zs", "ft", "ft (permuted)")}


def ratio_change(setting):
    """fn(idx, runs): the ratio of ``setting`` (one of its seeds) minus zero-shot's."""
    return lambda idx, r: ratio[setting](idx, r[0]) - ratio["zs"](idx, 0)


def runs_of(setting):
    return len(emb[setting]), 1


rec4 = findings.record(
    "geometry: ratio rises", "05_embeddings",
    "the inter/intra class distance ratio is higher after fine-tuning than zero-shot",
    findings.compare(ratio_change("ft"), ratio_change("ft (permuted)"), groups, n_boot,
                     n_runs=(runs_of("ft"), runs_of("ft (permuted)"))), {"above": 0.0},
    "the same difference for models fine-tuned on permuted labels")
glue("ratio_diff", Estimate.read(rec4).format(signed=True), display=False)
glue("ratio_ctrl", Estimate.read(rec4["control"]).format(signed=True), display=False)
glue("ratio_verdict", rec4["verdict"], display=False)

# %% tags=["hide-input"]
per = pd.DataFrame({names[s]: {c: v["ratio"] for c, v in geo[s]["per_label"].items()}
                    for s in ("zs", "ft", "ft (permuted)")})
fig, ax = plt.subplots(figsize=(6, 5))
if per.empty:
    ax.text(0.5, 0.5, "no label has five or more test images in this run", ha="center",
            va="center")
    ax.set_axis_off()
else:
    per.plot.barh(ax=ax, color=["#d95f02", "#1b9e77", "#bbbbbb"])
    ax.set_xlabel("inter / intra ratio of the class (test, first seed)")
    ax.invert_yaxis()
ax.set_title("Per-label distance ratio")
fig.tight_layout()
glue("fig_ratio_per_label", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_ratio_per_label
# :name: fig-ratio-per-label
#
# Inter/intra distance ratio of each label's class (test images): frozen encoder,
# fine-tuned, and fine-tuned on permuted labels (first seed of each).
# ```
#
# The overall ratio goes from {glue:text}`ratio_zs` (zero-shot) to {glue:text}`ratio_ft`
# (fine-tuned, mean over seeds): a paired change of {glue:text}`ratio_diff`, against
# {glue:text}`ratio_ctrl` for the models fine-tuned on permuted labels. **Finding 4
# {glue:text}`ratio_verdict`.** A higher ratio means the class centroids moved apart
# relative to how widely each class scatters. What it cannot tell us: the ratio summarises
# centroids, not decision boundaries, so it can move less than AUROC does (or the other way
# round), and labels that co-occur share members, which pulls their centroids together
# whatever the encoder learns. Per label, {numref}`fig-ratio-per-label` shows where the
# change happens.
#
# ## Projections
#
# UMAP {cite}`mcinnes2018umap` and t-SNE {cite}`vandermaaten2008tsne` place the test images
# in two dimensions, coloured by the rarest highlighted label each image has (images with
# none of them: "other"). Projections keep neighbourhoods, not distances: read clusters, not
# gaps.

# %%
import umap  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

rng = np.random.default_rng(0)
pick = np.sort(rng.choice(len(test), min(projection_points, len(test)), replace=False))
colour = geometry.primary_label(yt[pick], LABELS, highlight)


def project(x):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tsne = TSNE(perplexity=min(30, len(x) - 1), random_state=0, init="pca")
        return {"UMAP": umap.UMAP(n_neighbors=15, random_state=0,
                                  n_jobs=1).fit_transform(x),
                "t-SNE": tsne.fit_transform(x)}


projections = {s: project(emb[s][0][pick]) for s in ("zs", "ft")}

# %% tags=["hide-input"]
palette = dict(zip(list(highlight) + ["other"],
                   ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#cccccc"]))
fig, axes = plt.subplots(2, 2, figsize=(6.8, 6.6))
for r, s in enumerate(("zs", "ft")):
    for c, (pname, p) in enumerate(projections[s].items()):
        ax = axes[r, c]
        for lab in ["other", *highlight]:
            m = colour == lab
            ax.scatter(p[m, 0], p[m, 1], s=5, c=palette[lab], label=lab,
                       alpha=0.8 if lab != "other" else 0.4)
        ax.set_title(f"{pname}, {names[s]}")
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].legend(fontsize=9, markerscale=2)
fig.tight_layout()
glue("fig_projections", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_projections
# :name: fig-projections
#
# UMAP (left) and t-SNE (right) of test-image embeddings before (top) and after (bottom)
# fine-tuning (first seed), coloured by the rarest highlighted label each image has.
# ```
#
# In {numref}`fig-projections`, look for whether images with findings gather apart from the
# normal ones after fine-tuning; the ratio above is the quantitative version of that
# impression.

# %%
params = {"model": study.info.spec, "style": style, "limit": limit, "n_boot": n_boot}
artefacts.write_result(arts.geometry, "geometry", stamp, params, settings=geo)
written = findings.write_findings(arts.findings("05_embeddings"), [rec4], stamp)
print("wrote", display.output_name(written), "in the output folder")

# %% [markdown]
# ## Summary
#
# - With the definitions stated above, over {glue:text}`n_classes` classes, the inter/intra
#   ratio is {glue:text}`ratio_zs` for the frozen encoder (zero-shot and linear probe alike)
#   and {glue:text}`ratio_ft` after fine-tuning.
# - Finding 4 (the ratio rises) {glue:text}`ratio_verdict`.
# - The results page puts these distances beside the original study's.
#
# ## What's next
#
# {doc}`06_grad_cam` asks where in the image each model looks, and checks it against the
# true lesion regions.
#
# ## Exercises
#
# ```{exercise}
# :label: ex-geo-scale
#
# Multiply every embedding by 10. What happens to the inter- and intra-class distances and
# to the ratio {eq}`eq-ratio`? Why is only the ratio comparable between two models?
# ```
#
# ```{solution-start} ex-geo-scale
# :class: dropdown
# ```

# %%
g1 = geometry.class_geometry(emb["zs"][0], yt)
g10 = geometry.class_geometry(10 * emb["zs"][0], yt)
overall = ("inter_all", "intra_all", "ratio_all")
pd.DataFrame({"embeddings": {k: g1[k] for k in overall},
              "embeddings x 10": {k: g10[k] for k in overall}})

# %% [markdown]
# Both distances are multiplied by 10; the ratio is unchanged. Two models' embeddings have
# arbitrary, different scales (a fine-tuned model can change its norms), so absolute
# distances do not compare, while the ratio does.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-geo-multilabel
#
# An image with both Cardiomegaly and Edema counts toward both classes. How close are the
# two centroids compared with the average pair of centroids?
# ```
#
# ```{solution-start} ex-geo-multilabel
# :class: dropdown
# ```

# %%
g = geometry.class_geometry(emb["zs"][0], yt)
j, k = LABELS.index("Cardiomegaly"), LABELS.index("Edema")
members = {c: yt[:, LABELS.index(c)].astype(bool) for c in ("Cardiomegaly", "Edema")}
shared = (members["Cardiomegaly"] & members["Edema"]).sum()
if g["used"][j] and g["used"][k]:
    cj = emb["zs"][0][members["Cardiomegaly"]].mean(0)
    ck = emb["zs"][0][members["Edema"]].mean(0)
    print(f"{shared} shared images; centroid distance {np.linalg.norm(cj - ck):.3f} "
          f"vs mean inter-class distance {g['inter_all']:.3f}")
else:
    print("one of the two classes has fewer than five test images in this run")

# %% [markdown]
# Shared members pull both centroids towards the same images, so labels that often co-occur
# end up with close centroids and a small inter-class distance, even if the encoder
# separates the findings well. The ratio mixes separation with the label structure.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-geo-umap
#
# Project 300 instead of all test points. Do the UMAP clusters keep their shape? What does
# this say about reading distances between clusters in a projection?
# ```
#
# ```{solution-start} ex-geo-umap
# :class: dropdown
# ```

# %%
small = np.sort(rng.choice(len(test), min(300, len(test)), replace=False))
p_small = project(emb["zs"][0][small])["UMAP"]
p_all = project(emb["zs"][0][pick])["UMAP"]
print(f"UMAP extent, {len(small)} points: {np.ptp(p_small, axis=0).round(1)}; "
      f"{len(pick)} points: {np.ptp(p_all, axis=0).round(1)}")

# %% [markdown]
# Cluster layout and spacing change with the sample and the random state; only
# neighbourhoods are (approximately) preserved. Distances between clusters in UMAP or t-SNE
# carry little meaning, which is why the chapter measures distances in the original space.
#
# ```{solution-end}
# ```
