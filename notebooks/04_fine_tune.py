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
# # 4. Full fine-tuning
#
# ## Overview
#
# **The question.** If every weight may change, how far past zero-shot and the linear probe does
# the model go on IU-Xray, and is the seed study's claim {cite}`sadman2025interpreting` that
# fine-tuning separates the diseases best borne out, label by label, with confidence intervals?
#
# You will learn two ways to fine-tune a CLIP model for multi-label classification, how early
# stopping and checkpointing make training safe to interrupt, and how to compare three settings
# on the same images with paired confidence intervals.
#
# ## Prerequisites
#
# - {doc}`02_zero_shot` (the paired prompts) and {doc}`03_linear_probe`; this chapter reads both
#   chapters' test scores.
# - Binary cross-entropy, Adam, learning-rate schedules.
#
# ## Method
#
# Both objectives produce one logit $z_{ij}$ per image $i$ and label $j$ and minimise
# the mean binary cross-entropy $\frac{1}{nk}\sum_{ij}\mathrm{BCE}(\sigma(z_{ij}), y_{ij})$:
#
# * **contrastive** (image-text, label prompts; the default): with normalised image embedding
#   $u_i$, normalised embeddings $v_j^{+}$, $v_j^{-}$ of label $j$'s positive and negative prompt
#   ("cardiomegaly" / "no cardiomegaly", recomputed at every step so the text tower trains too)
#   and the seed's fixed temperature $T = 0.17$,
#
#   $$ z_{ij} = \frac{\langle u_i, v_j^{+}\rangle - \langle u_i, v_j^{-}\rangle}{T} , $$ (eq-ft-logit)
#
#   the log-odds of chapter 2's paired-prompt softmax {eq}`eq-paired`: after training, the model is scored exactly
#   as zero-shot was;
# * **bce** (a classification head): $z_i = W u_i + b$, with $W$ initialised at the zero-shot
#   solution $W_j = (v_j^{+} - v_j^{-})/T$, $b = 0$.
#
# Adam with a cosine learning-rate schedule, batch 32; the seed's settings (learning rate
# $10^{-6}$, 30 epochs) on the `full` profile; on the small `demo` model a larger learning rate
# and 10 epochs, chosen on the validation split (the choice is recorded in `helpers/config.py`).
# After each epoch the validation macro AUROC decides early stopping and the best epoch is kept.
# Checkpoints are written atomically after every epoch: an interrupted run resumes where it
# stopped, and a finished run is loaded instead of retrained.

# %% tags=["parameters"]
profile = "demo"  # demo or full
model = ""  # model spec; empty uses the profile's (tiny or biomedclip)
style = "target"  # demo only: phantom style of the IU-Xray images
limit = 0  # at most this many images per split (0 = all); for quick runs
on_error = "stop"  # an unreadable image: "stop" (naming it) or "skip" (counted in the stamp)
n_boot = 500  # bootstrap resamples (by report) for confidence intervals
objective = "contrastive"  # contrastive (label prompts) or bce (classification head)
epochs = 0  # 0 = the profile's default (demo 10, full 30)
lr = 0.0  # 0 = the profile's default (demo 3e-4, full 1e-6)
batch_size = 0  # 0 = the profile's default (32)
patience = 0  # early-stopping patience in epochs; 0 = the profile's default
temperature = 0.17  # the seed's temperature T
max_steps_per_epoch = 0  # cap on steps per epoch (0 = whole split); for quick runs
seed = 0  # training seed (order, augmentation, initialisation of nothing else)

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue

from helpers import finetune as F
from helpers import metrics as M
from helpers.config import data_dir, get_profile, output_dir
from helpers.stamp import show_stamp
from helpers.study import load_study

defaults = get_profile(profile).finetune
cfg = F.FinetuneConfig(objective=objective, epochs=epochs or defaults["epochs"], lr=lr or defaults["lr"],
                       batch_size=batch_size or defaults["batch_size"], patience=patience or defaults["patience"],
                       temperature=temperature, max_steps_per_epoch=max_steps_per_epoch or None, seed=seed)
cfg.validate()
study = load_study(profile, model or None, style=style, limit=limit or None, on_error=on_error)
LABELS = study.labels
stamp = study.stamp()
show_stamp(stamp)
train, val, test = study.rows("train"), study.rows("val"), study.rows("test")
Y = study.y()
pd.Series({k: str(v) for k, v in vars(cfg).items()}, name="value").to_frame()

# %% [markdown]
# ## Training

# %%
t0 = time.perf_counter()
run = F.finetune(study.model, study.tokenizer, study.pixels, Y, train, val, LABELS, study.info.mean,
                 study.info.std, study.info.weights_sha256, cfg, data_dir() / "runs" / profile / "finetune",
                 device=study.device)
wall = time.perf_counter() - t0
hist = pd.DataFrame(run.history).set_index("epoch")
train_s = float(hist["epoch_s"].sum()) if "epoch_s" in hist else run.wall_s
glue("ft_epochs", len(hist), display=False)
glue("ft_best_epoch", run.best_epoch, display=False)
glue("ft_train_min", f"{train_s / 60:.2f}", display=False)
print(f"{len(hist)} epochs; best epoch {run.best_epoch} (val macro AUROC {run.best_val_auroc:.3f}); "
      f"{'resumed from epoch ' + str(run.resumed_from) if run.resumed_from else 'trained from the start'}; "
      f"this call took {wall:.1f} s")

fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
a1.plot(hist.index, hist.train_loss, "o-", label="train", color="#1b9e77")
a1.plot(hist.index, hist.val_loss, "s-", label="validation", color="#d95f02")
a1.set_xlabel("epoch")
a1.set_ylabel("BCE loss")
a1.legend()
a2.plot(hist.index, hist.val_auroc, "o-", color="#7570b3")
a2.axvline(run.best_epoch, color="#999999", ls="--", label="best epoch (kept)")
a2.set_xlabel("epoch")
a2.set_ylabel("validation macro AUROC")
a2.legend()
fig.suptitle("Fine-tuning curves")
fig.tight_layout()
glue("fig_ft_curves", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_ft_curves
# :name: fig-ft-curves
#
# Left: training and validation loss per epoch. Right: validation macro AUROC, which decides
# early stopping; the dashed line marks the epoch whose weights are kept.
# ```
#
# Training ran {glue:text}`ft_epochs` epochs ({numref}`fig-ft-curves`); the best validation epoch, {glue:text}`ft_best_epoch`,
# is the model evaluated below. Thresholds again maximise validation F1 per label.

# %%
val_logits = F.predict_logits(run.scorer, study.pixels, val, study.info.mean, study.info.std, device=study.device)
test_logits = F.predict_logits(run.scorer, study.pixels, test, study.info.mean, study.info.std, device=study.device)
thr = M.tune_thresholds(Y[val], val_logits)
result = M.evaluate(Y[test], test_logits, thr, LABELS, study.groups(test), n_boot=n_boot)
glue("ft_auroc", f"{result['auroc_macro']:.3f}", display=False)
glue("ft_f1", f"{result['f1_macro']:.3f}", display=False)
M.headline_table(result).style.format("{:.3f}")

# %% [markdown]
# ## Finding 2: does fine-tuning separate the diseases best?
#
# The three settings are compared on the same test images: per-label AUROC (threshold-free
# separation) and F1 (at validation thresholds). The finding holds if fine-tuning's macro AUROC
# exceeds both the linear probe's and zero-shot's, with paired report-level bootstrap CIs of the
# differences above zero.

# %%
ids = study.table.image_id.to_numpy()[test]
zs = M.load_scores(output_dir(profile) / "zs_test_scores.npz", ids, made_by="02_zero_shot")
lp = M.load_scores(output_dir(profile) / "lp_test_scores.npz", ids, made_by="03_linear_probe")
yt = Y[test]
settings = {"zero-shot": (zs["scores"], zs["thresholds"]), "linear probe": (lp["scores"], lp["thresholds"]),
            "fine-tune": (test_logits, thr)}
per_auc = pd.DataFrame({n: M.per_label_auroc(yt, s) for n, (s, _) in settings.items()}, index=LABELS)
per_f1 = pd.DataFrame({n: [M.point_metrics(yt, s, (s >= t).astype(int), LABELS)["per_label"][c]["f1"]
                           for c in LABELS] for n, (s, t) in settings.items()}, index=LABELS)


def macro_auc(scores):
    return lambda rows: float(np.nanmean(M.per_label_auroc(yt[rows], scores[rows])))


groups = study.groups(test)
cmp = {other: M.paired_difference(macro_auc(test_logits), macro_auc(settings[other][0]), groups, n_boot)
       for other in ("linear probe", "zero-shot")}
cmp_df = pd.DataFrame(cmp, index=["fine-tune minus", "CI low", "CI high"]).T
holds2 = bool(all(cmp_df["CI low"] > 0))
glue("ft_vs_lp", f"{cmp['linear probe'][0]:+.3f}", display=False)
glue("ft_vs_lp_ci", f"[{cmp['linear probe'][1]:+.3f}, {cmp['linear probe'][2]:+.3f}]", display=False)
glue("ft_vs_zs", f"{cmp['zero-shot'][0]:+.3f}", display=False)
glue("ft_vs_zs_ci", f"[{cmp['zero-shot'][1]:+.3f}, {cmp['zero-shot'][2]:+.3f}]", display=False)
glue("sep_verdict", "holds" if holds2 else "does not hold", display=False)
glue("n_best_ft", int((per_auc.dropna(how="any").idxmax(axis=1) == "fine-tune").sum()), display=False)
glue("n_auc_labels", int(per_auc.notna().all(axis=1).sum()), display=False)

fig, axes = plt.subplots(1, 2, figsize=(10, 5), sharey=True)
colors = ["#d95f02", "#7570b3", "#1b9e77"]
per_auc.plot.barh(ax=axes[0], color=colors, legend=False)
axes[0].axvline(0.5, color="k", lw=0.8)
axes[0].set_xlabel("test AUROC")
per_f1.plot.barh(ax=axes[1], color=colors)
axes[1].set_xlabel("test F1 (validation thresholds)")
axes[0].invert_yaxis()
fig.suptitle("Per-label separation in the three settings")
fig.tight_layout()
glue("fig_three_settings", fig, display=False)
plt.close(fig)
cmp_df.style.format("{:+.3f}")

# %% [markdown]
# ```{glue:figure} fig_three_settings
# :name: fig-three-settings
#
# Per-label test AUROC (left) and F1 at validation thresholds (right) for zero-shot, the linear
# probe and the fine-tuned model, on the same test images.
# ```
#
# Per label ({numref}`fig-three-settings`), fine-tuning's macro AUROC differs from the linear probe's by {glue:text}`ft_vs_lp` (95% CI
# {glue:text}`ft_vs_lp_ci`) and from zero-shot's by {glue:text}`ft_vs_zs` (95% CI
# {glue:text}`ft_vs_zs_ci`); it has the best AUROC on {glue:text}`n_best_ft` of the {glue:text}`n_auc_labels` labels with
# both classes in the test split.
# **The separation finding {glue:text}`sep_verdict` on this run.**

# %%
M.save_scores(output_dir(profile) / "ft_test_scores.npz", ids, test_logits, yt, groups, thr)
out = M.write_metrics(
    output_dir(profile) / "fine_tune.json", "ft", result,
    params={"model": model or None, "style": style, "limit": limit, "n_boot": n_boot, **vars(cfg)},
    stamp=stamp, time_min=train_s / 60, history=run.history, best_epoch=run.best_epoch,
    run_dir=str(run.run_dir.relative_to(data_dir())),
    findings={"separation": {"auroc_diff_vs_lp": list(cmp["linear probe"]),
                             "auroc_diff_vs_zs": list(cmp["zero-shot"]), "holds": holds2}})
print(out)

# %% [markdown]
# ## Summary
#
# - Fine-tuning every weight reaches a test macro AUROC of {glue:text}`ft_auroc` (macro F1
#   {glue:text}`ft_f1`) after {glue:text}`ft_train_min` min of training.
# - Its advantage over the probe and zero-shot is measured on the same images with paired CIs.
#
# ## What's next
#
# {doc}`05_embeddings` asks *why*, in the geometry of the embedding space.
#
# ## Exercises
#
# :::{exercise}
# :label: ex-ft-bce
#
# Run `python -m helpers.run 04_fine_tune -p objective bce`. The head starts at the zero-shot
# solution, so what should the validation AUROC be before the first update, and why might the
# two objectives end at different places?
# :::
#
# :::{solution} ex-ft-bce
# :class: dropdown
#
# With $W_j = (v_j^+ - v_j^-)/T$ and $b = 0$, the head's logits equal {eq}`eq-ft-logit` for the
# initial weights: the starting point is chapter 2's paired-prompt classifier. The contrastive
# objective keeps every label tied to its prompt's text embedding (and trains the text tower);
# the BCE head may move each label's direction freely, which fits faster but forgets the text.
# :::
#
# :::{exercise}
# :label: ex-ft-resume
#
# Interrupt a fine-tuning run (Ctrl-C in `python -m helpers.run 04_fine_tune -p epochs 12`) after
# a few epochs and start it again. Where does it start, and why are the final weights the same as
# those of an uninterrupted run?
# :::
#
# :::{solution} ex-ft-resume
# :class: dropdown
#
# `last.pt` is written atomically after every epoch with the weights, the optimiser state, the
# history and the random-number state; the data order of every epoch is drawn from a generator
# seeded by the epoch number. The run restarts at the first unfinished epoch and replays exactly
# what the uninterrupted run would have done (a test checks this).
# :::
#
# :::{exercise}
# :label: ex-ft-paired
#
# Why are the comparisons between settings made with a *paired* bootstrap (one resample of the
# reports shared by both settings) rather than by checking whether two separate CIs overlap?
# :::
#
# :::{solution} ex-ft-paired
# :class: dropdown
#
# Both settings are scored on the same images; their errors are correlated (hard images are hard
# for both). Resampling once and taking the difference keeps that correlation, giving a much
# narrower and correct interval for the difference. Overlapping separate CIs do not imply that
# the difference is insignificant.
# :::
