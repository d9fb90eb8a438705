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
# # 3. Linear probing
#
# ## Overview
#
# **The question.** The image encoder stays frozen; only a linear classifier is trained on its
# embeddings. How much of the gap between zero-shot and a trained model does that close, and
# does the probe, as the seed study suggests {cite}`sadman2025interpreting`, lean on findings
# that merely *co-occur* with the one it is asked about?
#
# You will learn how to fit and regularise a probe without touching the test split, how class
# weighting answers imbalance, and a direct test of whether a classifier uses co-occurring
# findings as shortcuts.
#
# ## Prerequisites
#
# - {doc}`01_data` (label co-occurrence) and {doc}`02_zero_shot` (this chapter compares with its
#   scores, which it reads from chapter 2's output).
# - Logistic regression with an L2 penalty; {term}`AUROC`, {term}`Linear probe`.
#
# ## Method
#
# For image $i$ let $e_i \in \mathbb{R}^d$ be the frozen image embedding. The features
# are the L2-normalised embeddings, standardised with the training split's mean $\mu$ and spread
# $\sigma$: $x_i = (e_i/\lVert e_i\rVert - \mu)/\sigma$. For every label $j$ an independent logistic
# regression is fitted,
#
# $$ p_{ij} = \sigma(w_j^\top x_i + b_j), \qquad
#    \min_{w_j, b_j} \; \tfrac{1}{2}\lVert w_j \rVert^2 + C \sum_i c_{y_{ij}} \,
#    \mathrm{BCE}(p_{ij}, y_{ij}) , $$ (eq-probe)
#
# with class weights $c_y = n / (2 n_y)$ when `class_weight="balanced"` (imbalance: most labels
# are rare) and $c_y = 1$ otherwise ({eq}`eq-probe`). The strength $C$ is chosen from a grid by the validation
# macro AUROC, and per-label decision thresholds maximise validation F1. Test labels are read
# once, for the final numbers.

# %% tags=["parameters"]
profile = "demo"  # demo or full
model = ""  # model spec; empty uses the profile's (tiny or biomedclip)
style = "target"  # demo only: phantom style of the IU-Xray images
limit = 0  # at most this many images per split (0 = all); for quick runs
on_error = "stop"  # an unreadable image: "stop" (naming it) or "skip" (counted in the stamp)
n_boot = 500  # bootstrap resamples (by report) for confidence intervals
class_weight = "balanced"  # "balanced" or "none"
Cs = [0.01, 0.1, 1.0, 10.0]  # grid of inverse regularisation strengths, chosen on val

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue

from helpers import metrics as M
from helpers import probe as P
from helpers.config import output_dir
from helpers.stamp import show_stamp
from helpers.study import load_study

if class_weight not in ("balanced", "none"):
    raise ValueError(f"class_weight must be 'balanced' or 'none', got {class_weight!r}")
study = load_study(profile, model or None, style=style, limit=limit or None, on_error=on_error)
LABELS = study.labels
stamp = study.stamp()
show_stamp(stamp)
train, val, test = study.rows("train"), study.rows("val"), study.rows("test")
Y = study.y()
emb = study.image_embeddings()
print(f"{len(train)} train, {len(val)} val, {len(test)} test images; embeddings {emb.shape}")

# %% [markdown]
# ## Fitting and choosing $C$ on validation

# %%
probe = P.fit_probe(emb[train], Y[train], emb[val], Y[val], Cs=Cs,
                    class_weight=None if class_weight == "none" else class_weight)
glue("lp_fit_s", f"{probe.fit_s:.2f}", display=False)
glue("lp_C", probe.C, display=False)
fig, ax = plt.subplots(figsize=(4.5, 3))
ax.semilogx(list(probe.val_auroc_by_C), list(probe.val_auroc_by_C.values()), "o-", color="#1b9e77")
ax.axvline(probe.C, color="#999999", ls="--")
ax.set_xlabel("C (inverse regularisation strength)")
ax.set_ylabel("validation macro AUROC")
ax.set_title("Choosing C on validation")
fig.tight_layout()
glue("fig_choose_c", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_choose_c
# :name: fig-choose-c
#
# Validation macro AUROC of the probe for each regularisation strength $C$; the dashed line marks
# the chosen one. The test split plays no part in this choice.
# ```
#
# The whole grid (14 labels × {glue:text}`lp_n_C` values of $C$) took {glue:text}`lp_fit_s` s to fit
# from the cached embeddings; the chosen strength is $C$ = {glue:text}`lp_C`
# ({numref}`fig-choose-c`).

# %%
glue("lp_n_C", len(Cs), display=False)
val_logits, test_logits = probe.decision_function(emb[val]), probe.decision_function(emb[test])
thr = M.tune_thresholds(Y[val], val_logits)
result = M.evaluate(Y[test], test_logits, thr, LABELS, study.groups(test), n_boot=n_boot)
glue("lp_auroc", f"{result['auroc_macro']:.3f}", display=False)
glue("lp_f1", f"{result['f1_macro']:.3f}", display=False)
M.headline_table(result).style.format("{:.3f}")

# %% [markdown]
# Per label on test, beside zero-shot (chapter 2's validation-selected method):

# %%
zs = M.load_scores(output_dir(profile) / "zs_test_scores.npz", study.table.image_id.to_numpy()[test],
                   made_by="02_zero_shot")
per = pd.DataFrame(result["per_label"]).T[["prevalence", "precision", "recall", "f1", "auroc"]].astype(float)
per.insert(4, "zero-shot AUROC", M.per_label_auroc(Y[test], zs["scores"]))
ax = per[["zero-shot AUROC", "auroc"]].rename(columns={"auroc": "linear probe AUROC"}).plot.barh(
    figsize=(6, 5), color=["#d95f02", "#7570b3"])
ax.axvline(0.5, color="k", lw=0.8)
ax.set_xlabel("test AUROC")
ax.invert_yaxis()
plt.tight_layout()
glue("fig_lp_per_label", ax.figure, display=False)
plt.close(ax.figure)
per.style.format("{:.3f}")

# %% [markdown]
# ```{glue:figure} fig_lp_per_label
# :name: fig-lp-per-label
#
# Test AUROC per label: zero-shot (chapter 2's validation-selected prompts) and the linear probe.
# The line marks chance.
# ```
#
# ## Finding 3: does the probe pick up co-occurring findings?
#
# Labels co-occur in real reports (an enlarged heart often comes with edema or an effusion). A
# classifier trained on such data can learn the *partner* as a cue. We list the label pairs
# $(a, b)$ that co-occur in the training split with lift
# $P(a,b)/(P(a)P(b)) \ge 1.5$ and at least 20 images. For each pair and each direction we measure
# the **partner shift**: among test images *without* label $a$, the mean within-label percentile of
# $a$'s score on images that have the partner $b$, minus that on images without it,
#
# $$ \Delta_{a \leftarrow b} = \overline{\mathrm{pct}_a}\,\big|_{a=0,\,b=1}
#    - \overline{\mathrm{pct}_a}\,\big|_{a=0,\,b=0} . $$ (eq-partner-shift)
#
# $\Delta = 0$ in {eq}`eq-partner-shift` means $a$'s score ignores $b$. The finding holds if the probe's mean shift exceeds
# zero-shot's (a model that never saw IU-Xray's co-occurrences), with a paired report-level
# bootstrap CI above zero.

# %%
pairs = P.cooccurrence_pairs(Y[train], LABELS)
idx = {c: i for i, c in enumerate(LABELS)}
directed = [(idx[a], idx[b]) for a, b, _, _ in pairs] + [(idx[b], idx[a]) for a, b, _, _ in pairs]
yt = Y[test]


def mean_shift(scores):
    return lambda rows: np.nanmean([P.partner_shift(scores[rows], yt[rows], j, k) for j, k in directed])


if directed:
    shift_tab = pd.DataFrame(
        [{"label": LABELS[j], "partner": LABELS[k],
          "zero-shot shift": P.partner_shift(zs["scores"], yt, j, k),
          "probe shift": P.partner_shift(test_logits, yt, j, k)} for j, k in directed])
    diff, lo, hi = M.paired_difference(mean_shift(test_logits), mean_shift(zs["scores"]), study.groups(test),
                                       n_boot=n_boot)
    holds3 = bool(lo > 0)
else:
    shift_tab, diff, lo, hi, holds3 = pd.DataFrame(), float("nan"), float("nan"), float("nan"), False
glue("n_pairs", len(pairs), display=False)
glue("shift_diff", f"{diff:+.3f}", display=False)
glue("shift_ci", f"[{lo:+.3f}, {hi:+.3f}]", display=False)
glue("cooc_verdict", "holds" if holds3 else "does not hold", display=False)
shift_tab.style.format({"zero-shot shift": "{:+.3f}", "probe shift": "{:+.3f}"}) if len(shift_tab) else shift_tab

# %% [markdown]
# Over {glue:text}`n_pairs` co-occurring pairs (both directions), the probe's mean partner shift
# exceeds zero-shot's by {glue:text}`shift_diff` (95% CI {glue:text}`shift_ci`): **the co-occurrence
# finding {glue:text}`cooc_verdict` on this run.** Both columns of the table are positive for
# many pairs: an image with *any* finding tends to score higher on every label (a general
# "abnormal image" response, present even in zero-shot). The test therefore compares the two:
# in the `demo` profile each finding is drawn by its own mechanism in the phantom, so the probe's
# shift *beyond* zero-shot's is what it learned from the co-occurrences of IU-Xray's training
# labels.

# %%
P.save_probe(output_dir(profile) / "probe.npz", probe)  # chapter 6 explains this probe's decisions
M.save_scores(output_dir(profile) / "lp_test_scores.npz", study.table.image_id.to_numpy()[test],
              test_logits, Y[test], study.groups(test), thr)
out = M.write_metrics(
    output_dir(profile) / "linear_probe.json", "lp", result,
    params={"model": model or None, "style": style, "limit": limit, "n_boot": n_boot,
            "class_weight": class_weight, "Cs": list(Cs), "C": probe.C},
    stamp=stamp, time_min=probe.fit_s / 60,
    findings={"cooccurrence": {"mean_shift_difference": diff, "ci95": [lo, hi], "holds": holds3,
                               "pairs": [[a, b] for a, b, _, _ in pairs]}})
print(out)

# %% [markdown]
# ## Summary
#
# - Per label ({numref}`fig-lp-per-label`), a linear probe on frozen embeddings reaches a test macro AUROC of {glue:text}`lp_auroc` (macro
#   F1 {glue:text}`lp_f1`), in {glue:text}`lp_fit_s` s of fitting.
# - Whether it exploits co-occurrence is measured, not assumed: the partner-shift test above.
#
# ## What's next
#
# {doc}`04_fine_tune` unfreezes every weight and fine-tunes the whole model.
#
# ## Exercises
#
# :::{exercise}
# :label: ex-lp-weights
#
# Run `python -m helpers.run 03_linear_probe -p class_weight none`. Which metrics change most:
# AUROC or F1? Explain why from what class weighting does to the loss {eq}`eq-probe`.
# :::
#
# :::{solution} ex-lp-weights
# :class: dropdown
#
# Without weights the rare labels' positives contribute little to the loss, so the fitted scores
# for rare labels are compressed towards low values. AUROC depends only on the ranking within a
# label and usually moves little; the thresholded metrics move more, although per-label
# thresholds tuned on validation absorb part of the shift.
# :::
#
# :::{exercise}
# :label: ex-lp-grid
#
# Narrow the grid to one value, `-p Cs "[100.0]"` (almost no regularisation). Compare the
# validation and test AUROC with the chapter's default. What does the gap tell you?
# :::
#
# :::{solution} ex-lp-grid
# :class: dropdown
#
# Weak regularisation lets the probe fit the training split's noise, including the co-occurrence
# patterns of the training reports; validation and test AUROC drop relative to the tuned $C$. The
# grid and its choice on validation are what keep the probe honest.
# :::
#
# :::{exercise}
# :label: ex-lp-shift
#
# The partner shift uses within-label percentiles rather than raw scores. Why would raw scores
# make the comparison between zero-shot and the probe meaningless?
# :::
#
# :::{solution} ex-lp-shift
# :class: dropdown
#
# Zero-shot scores are probabilities from a softmax over two prompts; probe scores are logits of
# another scale. A raw difference mixes the effect with the scale. Percentiles put both on the
# same 0-1 scale, where a shift is comparable.
# :::
