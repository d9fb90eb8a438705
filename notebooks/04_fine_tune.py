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
# **The question.** If every weight may change, how far past zero-shot and the linear probe
# does the model go on IU-Xray, and is the seed study's claim {cite}`sadman2025interpreting`
# that fine-tuning separates the diseases best borne out, with intervals that include the
# spread between training seeds and beside a run that cannot have learned anything?
#
# **Objectives.** By the end of this chapter you will be able to
#
# 1. fine-tune a CLIP model for multi-label classification in two ways, safely
#    interruptible (§ Training);
# 2. report a trained model over several training seeds, with intervals that combine seed
#    variance and test resampling (§ Test metrics);
# 3. train the permuted-label negative control and read a comparison beside it
#    (§ Finding 2).
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# |---|---|---|
# | {doc}`02_zero_shot`, {doc}`03_linear_probe` | Necessary | their scores are compared here |
# | Binary cross-entropy, Adam, learning-rate schedules | Necessary | |
# | Paired bootstrap | Helpful | differences between settings on the same images |
#
# **Time to learn**: 40 minutes.
#
# ## Method
#
# Both objectives produce one logit $z_{ij}$ per image $i$ and label $j$ and minimise
# the mean binary cross-entropy $\frac{1}{nk}\sum_{ij}\mathrm{BCE}(\sigma(z_{ij}), y_{ij})$:
#
# * **contrastive** (image-text, label prompts; the default): with normalised image
#   embedding $u_i$, normalised embeddings $v_j^{+}$, $v_j^{-}$ of label $j$'s positive and
#   negative prompt ("cardiomegaly" / "no cardiomegaly", recomputed at every step so the text
#   tower trains too) and the seed's fixed temperature $T = 0.17$,
#
#   $$ z_{ij} = \frac{\langle u_i, v_j^{+}\rangle - \langle u_i, v_j^{-}\rangle}{T} ,
#   $$ (eq-ft-logit)
#
#   the log-odds of chapter 2's paired-prompt softmax {eq}`eq-paired`: after training, the
#   model is scored exactly as zero-shot was;
# * **bce** (a classification head): $z_i = W u_i + b$, with $W$ initialised at the
#   zero-shot solution $W_j = (v_j^{+} - v_j^{-})/T$, $b = 0$.
#
# In code, the logit {eq}`eq-ft-logit` of both objectives:
#
# ```{literalinclude} ../../helpers/finetune.py
# :pyobject: LabelScorer.embedding_logits
# ```
#
# Adam with a cosine learning-rate schedule, batch 32; the seed's settings (learning rate
# $10^{-6}$, 30 epochs) on the `full` profile; on the small `demo` model a larger learning
# rate and fewer epochs, chosen on the validation split (recorded in `helpers/config.py`).
# After each epoch the validation macro AUROC decides early stopping and the best epoch is
# kept. Checkpoints are written atomically: an interrupted run resumes where it stopped, and
# a finished run is loaded instead of retrained.
#
# **Seeds and control.** Every run is repeated for `n_seeds` training seeds (data order and
# augmentation), and once more per seed on labels permuted across training and validation
# reports (chapter 3's control): a fine-tuned model that cannot have learned the findings.

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
n_boot = 500  # bootstrap resamples (by report) for confidence intervals
objective = "contrastive"  # contrastive (label prompts) or bce (classification head)
epochs = 0  # 0: the profile's default
lr = 0.0  # 0: the profile's default
batch_size = 0  # 0: the profile's default (32)
patience = 0  # early-stopping patience in epochs; 0: the profile's default
temperature = 0.17  # the seed's temperature T
max_steps_per_epoch = 0  # cap on steps per epoch (0: whole split); for quick runs
n_seeds = 3  # training seeds, for the real labels and for the permuted-label control

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue

from helpers import display, finetune, findings, images, metrics, runs
from helpers.config import get_profile
from helpers.io import atomic_write_json
from helpers.stamp import show_stamp
from helpers.study import load_study

defaults = get_profile(profile).finetune
cfg = finetune.FinetuneConfig(
    objective=objective, epochs=epochs or defaults["epochs"], lr=lr or defaults["lr"],
    batch_size=batch_size or defaults["batch_size"],
    patience=patience or defaults["patience"], temperature=temperature,
    max_steps_per_epoch=max_steps_per_epoch or None)
cfg.validate()
study = load_study(profile, model, image_dir=image_dir, style=style,
                   uncertain_policy=uncertain_policy, split_seed=split_seed,
                   split_fractions=split_fractions, views=views,
                   reports_path=reports_path, limit=limit, on_error=on_error)
arts = study.artefacts
LABELS = study.labels
stamp = study.stamp(n_seeds=n_seeds)
show_stamp(stamp)
train, val, test = study.rows("train"), study.rows("val"), study.rows("test")
Y = study.y()
yt, groups = Y[test], study.groups(test)
test_ids = study.table.image_id.to_numpy()[test]
seeds = list(range(n_seeds))
config = {k: str(v) for k, v in vars(cfg).items() if k != "seed"}
pd.Series(config, name="value").to_frame()

# %% [markdown]
# ## Training

# %%
real = runs.finetune_runs(study, cfg, seeds)
hist = pd.concat([pd.DataFrame(r.history).assign(seed=s) for s, r in zip(seeds, real)])
train_min = hist.groupby("seed").epoch_s.sum().mean() / 60
glue("ft_train_min", f"{train_min:.2f} min", display=False)  # units inside for nbval
glue("ft_best_epochs", ", ".join(str(r.best_epoch) for r in real), display=False)
glue("ft_epochs", cfg.epochs, display=False)

fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
for s, g in hist.groupby("seed"):
    a1.plot(g.epoch, g.train_loss, "o-", ms=3, color="#1b9e77",
            label="train" if s == 0 else None)
    a1.plot(g.epoch, g.val_loss, "s-", ms=3, color="#d95f02",
            label="validation" if s == 0 else None)
    a2.plot(g.epoch, g.val_auroc, "o-", ms=3, label=f"seed {s}")
    a2.axvline(real[s].best_epoch, color="#999999", ls=":", lw=0.8)
a1.set_xlabel("epoch")
a1.set_ylabel("BCE loss")
a1.legend()
a2.set_xlabel("epoch")
a2.set_ylabel("validation macro AUROC")
a2.legend(fontsize=7)
fig.suptitle("Fine-tuning curves, one line per training seed")
fig.tight_layout()
glue("fig_ft_curves", fig, display=False)
plt.close(fig)

# %% [markdown]
# ```{glue:figure} fig_ft_curves
# :name: fig-ft-curves
#
# Left: training and validation loss per epoch. Right: validation macro AUROC, which
# decides early stopping; dotted lines mark the epoch whose weights each seed keeps.
# ```
#
# Each seed trained for at most {glue:text}`ft_epochs` epochs ({numref}`fig-ft-curves`);
# the best validation epochs were {glue:text}`ft_best_epochs`. A best epoch at the very end
# means validation AUROC was still rising: more epochs might help, which is a choice to make
# on validation, never on test.
#
# ## Test metrics
#
# Thresholds maximise validation F1 per label and seed. The point values are means over the
# seeds; each interval draws, per bootstrap replicate, a resample of the test reports *and*
# a resample of the seeds (as many as there are, with replacement), and averages over the
# drawn seeds (a two-level bootstrap): it is an interval for the **mean over seeds** that
# is printed, not for a single new run. With {glue:text}`n_seeds_glue` seeds the seed level
# is a sensitivity check, not an estimate of the seed variance; the `full` profile's
# reproduction uses at least five ({doc}`../reproducing`).
#
# ```{literalinclude} ../../helpers/metrics.py
# :pyobject: bootstrap_runs
# ```

# %%
def logits_of(result, rows):
    return finetune.predict_logits(result.scorer, study.pixels, rows, study.info.mean,
                                   study.info.std, device=study.device)


def test_scores(results, targets):
    """Test logits (m, n, k) of every seed, thresholds (m, k) tuned on each seed's
    validation targets."""
    thresholds = [metrics.tune_thresholds(y[val], logits_of(r, val))
                  for r, y in zip(results, targets)]
    return np.stack([logits_of(r, test) for r in results]), np.stack(thresholds)


ft_logits, ft_thr = test_scores(real, [Y] * n_seeds)
result = metrics.evaluate(yt, ft_logits, ft_thr, LABELS, groups, n_boot=n_boot)
result["calibration"] = metrics.calibration(yt, metrics.sigmoid(ft_logits).mean(0))
for s in seeds:
    metrics.save_scores(arts.scores("ft", "", s), test_ids, ft_logits[s], yt, groups,
                        ft_thr[s])
zs = metrics.load_scores(arts.scores("zs"), test_ids, made_by="02_zero_shot")
lp = metrics.load_scores(arts.scores("lp"), test_ids, made_by="03_linear_probe")
refs = json.loads(arts.reference.read_text())["scorers"]
zs_result = metrics.evaluate(yt, zs["scores"], zs["thresholds"], LABELS, groups, n_boot)
lp_result = metrics.evaluate(yt, lp["scores"], lp["thresholds"], LABELS, groups, n_boot)
glue("ft_auroc", display.fmt_ci(result["auroc_macro"], result["ci95"]["auroc_macro"]),
     display=False)
glue("ft_f1", f"{result['f1_macro']:.3f}", display=False)
glue("ft_auroc_seeds", ", ".join(f"{v:.3f}" for v in result["per_run"]["auroc_macro"])
     if "per_run" in result else f"{result['auroc_macro']:.3f}", display=False)
ours = {"fine-tune": result, "linear probe": lp_result, "zero-shot": zs_result}
glue("ft_floors", display.floor_sentence(ours, refs, metrics.HEADLINE), display=False)
glue("n_seeds_glue", n_seeds, display=False)
display.against_floors(ours, refs, metrics.HEADLINE)

# %% [markdown]
# The macro AUROC is {glue:text}`ft_auroc` over seeds whose own values are
# {glue:text}`ft_auroc_seeds`. Read against the floors (▼: no better than the best
# image-independent scorer): {glue:text}`ft_floors`.
#
# ## Finding 2: does fine-tuning separate the diseases best?
#
# The seed's ordering is fine-tune > linear probe > zero-shot. We test each step as a paired
# difference of macro AUROC (threshold-free separation) on the same test images, each
# replicate drawing one seed of every trained side. **Negative control**: the same
# differences for the probe and the fine-tuned model trained on permuted labels. If
# fine-tuning "beats" zero-shot even when the labels it saw were meaningless, the ordering
# is an artefact of the procedure, not separation learned from the findings.

# %%
permuted = runs.finetune_runs(study, cfg, seeds, variant="permuted")
perm_targets = [runs.control_targets(study, s) for s in seeds]
perm_logits, perm_thr = test_scores(permuted, perm_targets)
for s in seeds:
    metrics.save_scores(arts.scores("ft", "permuted", s), test_ids, perm_logits[s], yt,
                        groups, perm_thr[s])
lp_perm = np.stack([
    metrics.load_scores(arts.scores("lp", "permuted", s), test_ids,
                        made_by="03_linear_probe")["scores"]
    for s in arts.scored_seeds("lp", "permuted", made_by="03_linear_probe")])


def macro_auc(scores):
    """Macro AUROC of run ``r`` of ``scores`` (m, n, k) on test rows ``rows``."""
    def fn(rows, r=0):
        return float(np.nanmean(metrics.per_label_auroc(yt[rows], scores[r][rows])))

    return fn


sides = {"fine-tune": ft_logits, "linear probe": lp["scores"][None],
         "zero-shot": zs["scores"][None], "fine-tune (permuted)": perm_logits,
         "linear probe (permuted)": lp_perm}
comparisons = [("fine-tune", "linear probe"), ("linear probe", "zero-shot"),
               ("fine-tune", "zero-shot")]
control_of = {"fine-tune": "fine-tune (permuted)",
              "linear probe": "linear probe (permuted)", "zero-shot": "zero-shot"}


def difference(a, b):
    """fn(idx, runs): macro AUROC of side ``a`` minus side ``b``, one run of each."""
    fa, fb = macro_auc(sides[a]), macro_auc(sides[b])
    return lambda idx, r: fa(idx, r[0]) - fb(idx, r[1])


def n_runs(a, b):
    return len(sides[a]), len(sides[b])


records = []
for a, b in comparisons:
    ca, cb = control_of[a], control_of[b]
    comparison = findings.compare(difference(a, b), difference(ca, cb), groups, n_boot,
                                  n_runs=(n_runs(a, b), n_runs(ca, cb)))
    records.append(findings.record(
        f"separation: {a} > {b}", "04_fine_tune",
        f"{a} has a higher test macro AUROC than {b} (paired difference > 0)",
        comparison, {"above": 0.0},
        f"{ca} minus {cb}: trained sides see permuted labels"))
findings.styled(findings.findings_table(
    findings.as_frame(records, profile, study.info.id), with_model=False).drop(
        columns="after Holm"))

# %% [markdown]
# Every row is one step of the seed's ordering: its estimate with a 95% interval covering
# test resampling and training seeds, and the same difference between the permuted-label
# models beside it. **Finding 2** rests on the first row: fine-tune over probe
# {glue:text}`sep_ft_lp`; the ordering as a whole {glue:text}`sep_overall`. What it cannot
# tell us: AUROC is one summary of separation; per label (below) the ordering can differ.

# %%
glue("sep_ft_lp", records[0]["verdict"], display=False)
all_hold = all(r["verdict"].startswith("holds") for r in records)
glue("sep_overall", "holds at every step" if all_hold else
     "does not hold at every step (see the verdict column)", display=False)
three = {"zero-shot": sides["zero-shot"], "linear probe": sides["linear probe"],
         "fine-tune (seed mean)": ft_logits}
per_auc = pd.DataFrame({n: metrics.per_label_auroc(yt, s.mean(0))
                        for n, s in three.items()}, index=LABELS)
ax = per_auc.plot.barh(figsize=(6.5, 5), color=["#d95f02", "#7570b3", "#1b9e77"])
ax.axvline(0.5, color="k", lw=0.8)
ax.set_xlabel("test AUROC")
ax.invert_yaxis()
ax.set_title("Per-label separation in the three settings")
plt.tight_layout()
glue("fig_three_settings", ax.figure, display=False)
plt.close(ax.figure)

# %% [markdown]
# ```{glue:figure} fig_three_settings
# :name: fig-three-settings
#
# Per-label test AUROC for zero-shot, the linear probe and the fine-tuned model (scores
# averaged over seeds), on the same test images.
# ```

# %%
params = {"model": study.info.spec, "style": style, "limit": limit, "n_boot": n_boot,
          "n_seeds": n_seeds, "uncertain_policy": uncertain_policy,
          "split_seed": split_seed, **config}
perm_result = metrics.evaluate(yt, perm_logits, perm_thr, LABELS, groups, n_boot)
metrics.write_metrics(
    arts.metrics("ft"), "ft", result, params=params, stamp=stamp, time_min=train_min,
    history={str(s): r.history for s, r in zip(seeds, real)},
    best_epoch={str(s): r.best_epoch for s, r in zip(seeds, real)},
    permuted_control=perm_result)
print(findings.write_findings(arts.findings("04_fine_tune"), records, stamp))

# %% [markdown]
# ## Summary
#
# - Fine-tuning every weight reaches a test macro AUROC of {glue:text}`ft_auroc` (macro F1
#   {glue:text}`ft_f1`) after {glue:text}`ft_train_min` of training per seed.
# - Finding 2 (fine-tune over probe) {glue:text}`sep_ft_lp`; the seed's full ordering
#   {glue:text}`sep_overall`.
#
# ## What's next
#
# {doc}`05_embeddings` asks *why*, in the geometry of the embedding space.
#
# ## Exercises
#
# ```{exercise}
# :label: ex-ft-bce
#
# The BCE head starts at the zero-shot solution. Check that, before any update, its logits
# equal the contrastive logits {eq}`eq-ft-logit` of the same model.
# ```
#
# ```{solution-start} ex-ft-bce
# :class: dropdown
# ```

# %%
import torch  # noqa: E402

x = study.pixels.pixels[test[:8]]
head = finetune.build_scorer(study.model, study.tokenizer, LABELS,
                             finetune.FinetuneConfig(objective="bce")).eval()
paired = finetune.build_scorer(study.model, study.tokenizer, LABELS,
                               finetune.FinetuneConfig(objective="contrastive")).eval()
inputs = images.to_model_input(np.asarray(x), study.info.mean, study.info.std)
with torch.no_grad():
    gap = (head(inputs) - paired(inputs)).abs().max().item()
print(f"largest difference between the two heads' logits: {gap:.2e}")

# %% [markdown]
# With $W_j = (v_j^+ - v_j^-)/T$ and $b = 0$ the head reproduces {eq}`eq-ft-logit`: both
# objectives start at chapter 2's classifier. The contrastive objective keeps every label
# tied to its prompt's text embedding (and trains the text tower); the BCE head may move
# each label's direction freely.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ex-ft-paired
#
# Compare the paired interval of "fine-tune minus linear probe" with the two settings'
# separate intervals. Why is the paired one the right one to read?
# ```
#
# ```{solution-start} ex-ft-paired
# :class: dropdown
# ```

# %%
for name, r in (("fine-tune", result), ("linear probe", lp_result)):
    print(f"{name}: {display.fmt_ci(r['auroc_macro'], r['ci95']['auroc_macro'])}")
print("paired difference:", display.fmt_ci(records[0]["estimate"], records[0]["ci95"],
                                           signed=True))

# %% [markdown]
# Both settings are scored on the same images; their errors are correlated (hard images are
# hard for both). Resampling once and taking the difference keeps that correlation, giving
# a narrower and correct interval for the difference; overlapping separate intervals do not
# imply that the difference is insignificant.
#
# ```{solution-end}
# ```
