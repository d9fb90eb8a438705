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
# # 6b. Do the maps explain the model? Sanity checks and the location prior
#
# ## Overview
#
# **The question.** {doc}`06_grad_cam` checked the scoring with maps whose scores are known,
# then scored every setting's maps against the true regions. Two questions remain before any map can be read as "where
# the model looks". Do the maps change when what the model learned is taken away (its
# weights, then its labels)? A map that stays the same explains the architecture and the
# image, not the model {cite}`adebayo2018sanity`. And do the maps find lesions where knowing
# the usual place of a finding does not help? On the phantoms, lesions sit where
# radiologists' boxes put them, so a map can score well by pointing where findings usually
# are.
#
# **Objectives.** By the end of this chapter you will be able to
#
# 1. run Adebayo et al.'s cascading model randomisation and read its curves
#    (§ Cascading randomisation);
# 2. test a setting against randomised copies of itself, a second group of copies being the
#    negative control, and against a model trained on permuted labels
#    (§ Randomised copies);
# 3. build test pairs on which the location prior cannot help, by selection from the
#    renderer's own output (§ Off the prior);
# 4. decide each verdict as a paired difference from its negative control, and read the
#    positive control first (§ Verdicts).
#
# ## Prerequisites
#
# | Concept | Importance | Notes |
# |---|---|---|
# | {doc}`06_grad_cam` | Necessary | the settings, the pairs, the scores and the positive control |
# | {doc}`04_fine_tune` | Helpful | the model fine-tuned on permuted labels |
# | Rank correlation, paired bootstrap | Helpful | every number carries a 95% CI |
#
# **Time to learn**: 40 minutes.
#
# **From {doc}`06_grad_cam`**, used here without being defined again: the hit of a map
# (shared among pixels that tie for its maximum), the grid chance level $c_{\text{grid}}$
# and degenerate maps (§ Method there), the location prior, the positive
# control and the marked images it sees (§ The positive control), and each setting's CAM
# layer: the last block's input for the CLS-pooled settings, the final norm for the
# control, which pools its patch tokens.
#
# ## Method
#
# **Cascading model randomisation** {cite}`adebayo2018sanity` re-draws the weights from the
# top down (head, projection, final norm, blocks from last to first, patch embedding) and
# reports, after each step, the Spearman rank correlation of the maps with the trained
# model's ({func}`helpers.saliency.regions.rank_correlation`, on $4 \times 4$ block means).
# Re-drawing follows {func}`helpers.saliency.explain.reinitialise`: matrices and token
# embeddings from $\mathcal N(0, 0.02^2)$, every normalisation layer the identity:
#
# ```{literalinclude} ../../helpers/saliency/explain.py
# :pyobject: reinitialise
# ```
#
# **Randomised copies.** Every setting with its whole tower re-drawn
# {glue:text}`n_copies` times (seeds 0, 1, …), in two groups of three: A and B. With $h$
# the trained model's per-pair hit and $\bar h^{A}, \bar h^{B}$ the per-pair mean hit of
# each group, the finding is the mean of $h - \bar h^{A}$ and its negative control the mean
# of $\bar h^{B} - \bar h^{A}$, two groups of models that learned nothing, on the same
# report resamples (the CIs resample reports; the copies enter as group means, which cut the
# noise of re-drawing a tower):
#
# ```{literalinclude} ../../helpers/saliency/sanity.py
# :pyobject: versus
# ```
#
# **Data randomisation** explains the model chapter 4 fine-tuned on labels permuted across
# training reports; the fine-tune passes when its maps hit more often.
#
# **Off the prior.** A finding about the location prior is decided on pairs where the prior
# cannot help (§ Off the prior). There the prior hits {glue:text}`off_prior_hit`, so the
# bar a map must clear per pair is the better of the prior's hit and the grid chance level,
# $b = \max(h_{\text{prior}}, c_{\text{grid}})$, and the control is the mean of its
# randomised copies A against the same bar. In the paired difference the bar cancels:
# finding minus control is the setting's hit minus its copies' mean. The bar enters only
# the finding's own rule (its CI
# must clear 0), which on these pairs asks for hits beyond chance. "Beats the location
# prior" is therefore decided as "beats chance, and its randomised copies by the margin, on
# lesions the prior misses". The bar and the off-prior pairs were chosen after the first
# runs, when the prior proved unbeatable on the renderer's usual positions (the registry's
# note says so).

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
max_pairs = 200  # as chapter 6: at most this many (image, label) pairs per split
cascade_pairs = 24  # pairs for the cascading randomisation curves
n_examples = 4  # off-prior example figures
annotations = ""  # full profile: annotation CSV (empty: the shipped example)
k_folds = 5  # as chapter 6: folds of probes for annotated training images
control_epochs = 30  # as chapter 6: positive control training epochs
control_images = 1200  # as chapter 6: positive control training images

# %%
import textwrap

import matplotlib.pyplot as plt
import numpy as np
from myst_nb import glue

from helpers.analysis import findings
from helpers.book import display
from helpers.book.stamp import show_stamp
from helpers.book.study import load_study
from helpers.saliency import offprior, positive_control, regions, sanity, settings

study = load_study(profile, model, image_dir=image_dir, style=style,
                   uncertain_policy=uncertain_policy, split_seed=split_seed,
                   split_fractions=split_fractions, views=views,
                   reports_path=reports_path, limit=limit, on_error=on_error)
arts = study.artefacts
stamp = study.stamp()
show_stamp(stamp)
glue("cascade_pairs_glue", cascade_pairs, display=False)
glue("n_copies", len(sanity.COPY_SEEDS), display=False)

# %% [markdown]
# The settings, their pairs and the positive control are chapter 6's
# ({func}`helpers.saliency.settings.build`; the control comes from its cache), and so are the
# trained models' per-pair Grad-CAM hits ({func}`helpers.saliency.settings.load_hits`
# refuses a file written for other pairs).

# %% tags=["nbval-ignore-output"]
control_config = positive_control.ControlConfig(epochs=control_epochs,
                                                max_images=control_images)
cs = settings.build(study, max_pairs, annotations, control_config, k_folds)
hits, reference_hits = settings.load_hits(arts.cam_hits, cs)
glue("zs_name", cs.zs_name, display=False)
prior_hits = reference_hits.get("location prior")
settings.pairs_table(cs)

# %% [markdown]
# ## Cascading randomisation
#
# For the zero-shot, probe, fine-tuned and control settings, on
# {glue:text}`cascade_pairs_glue` pairs: after each step of re-initialisation from the top
# down, the Spearman correlation of every method's maps with the trained model's maps, and
# Grad-CAM's hit rate. Maps that explain the model must move away from the original as its
# learned weights go.

# %% tags=["nbval-ignore-output"]
curves, step_health = sanity.cascade_curves(
    cs, settings.subsample(cs.base, cascade_pairs), n_boot)
failed_steps = [f"{cs.names[k]} · {step}" for (k, step), h in step_health.items()
                if h["failed"]]
glue("failed_steps", ", ".join(failed_steps) if failed_steps else
     "none (at every step the randomised scores and input gradients are non-zero and "
     "differ from the trained model's, and its Grad-CAM maps are not degenerate)",
     display=False)

# %% tags=["hide-input"]
keys = cs.cascade_keys()
n_rows = max(1, (len(keys) + 1) // 2)
fig, axes = plt.subplots(n_rows, 2, figsize=(6.8, 3.3 * n_rows), sharey=True,
                         squeeze=False)
for ax in axes.flat[len(keys):]:
    ax.set_visible(False)
for ax, key in zip(axes.flat, keys):
    for method, curve in curves[curves.setting == key].groupby("method", sort=False):
        x = np.arange(len(curve))
        line, = ax.plot(x, curve.spearman, marker="o", ms=3,
                        label=settings.METHOD_NAMES[method])
        ax.fill_between(x, curve.spearman_lo, curve.spearman_hi, alpha=0.12)
        undefined = x[(curve.n_defined == 0).to_numpy() | curve.failed_step.to_numpy()]
        ax.plot(undefined, np.zeros(len(undefined)), ls="", marker="x",
                color=line.get_color())
    ax.set_xticks(x, curve.step, rotation=70, fontsize=9)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title(cs.names[key], fontsize=10)
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
# Every step is checked before it is scored
# ({func}`helpers.saliency.explain.randomisation_health`): the randomised scorer's scores and
# input gradients must be non-zero and differ from the trained model's, and at most half of
# its maps may be degenerate; a step that fails is reported, never scored at the chance
# level. Failed steps in this run: {glue:text}`failed_steps`.
#
# ## Randomised copies
#
# Grad-CAM of each setting with the whole tower re-initialised ({glue:text}`n_copies`
# copies), on all its pairs: a setting passes when its hit rate is above the mean of its
# copies A; copies B against copies A is the negative control. For the fine-tune, the column
# "trained − permuted-label model" is the data randomisation.

# %% tags=["nbval-ignore-output"]
copies = sanity.randomised_copies(cs)

# %%
sanity.sanity_table(cs, hits, copies, curves, n_boot)

# %% [markdown]
# Read the copies' health first (the last column): each copy is checked as the cascade's
# steps are;
# a failed copy could only score the chance level, and the verdicts below then say so. The
# "final Spearman" column is the rank correlation of Grad-CAM maps with the trained model's
# after the whole cascade (pairs with a constant map left out, as their correlation is
# undefined). The control column, copies B against copies A, is the noise of re-drawing a
# tower: where its interval excludes 0 ({glue:text}`noisy_controls`), two groups of towers
# that learned nothing differ by that much, and a trained model must beat
# that noise before its maps count as showing what it learned.
#
# {glue:text}`copies_alike`

# %%
same = [np.mean(copies[("lp", s)].hits == copies[("ft", s)].hits)
        for s in sanity.COPY_SEEDS]
objective = settings.finetune_objective(study)
glue("copies_alike", sanity.copies_alike_reading(same, objective), display=False)
glue("noisy_controls", sanity.noisy_controls(cs, copies, n_boot), display=False)

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
# Grad-CAM (same layer, same method) and its randomised copies are scored on them; the
# positive control sees them marked, as it sees every image.


# %% tags=["nbval-ignore-output"]
off = sanity.off_prior_scores(cs, copies, control_config, n_examples)

# %%
if off is not None:
    mix = sanity.label_mix(cs, off)
    shares = mix["off-prior share"]
    area_off = regions.area_fraction(off.pairs.masks).mean()
    area_all = regions.area_fraction(cs.base.masks).mean()
    texts = {
        "n_off": len(off.pairs), "n_off_examined": off.off.n_examined,
        "n_off_rendered": off.off.n_rendered,
        "off_share": f"{len(off.pairs) / max(off.off.n_examined, 1):.0%}",
        "off_prior_hit": off.mean(off.prior_hit, n_boot).format(),
        "off_chance": off.mean(off.chance, n_boot).format(),
        "off_rare": ", ".join(f"{lab} ({v:.0%})"
                              for lab, v in shares.nsmallest(3).items()),
        "off_common": ", ".join(f"{lab} ({v:.0%})"
                                for lab, v in shares.nlargest(3).items()),
        "off_area": f"{area_off:.3f} of the image on average, against {area_all:.3f} "
                    "on the test pairs"}
    off_table = off.table(cs, n_boot)
else:
    texts = dict.fromkeys(("n_off", "n_off_examined", "n_off_rendered", "off_share",
                           "off_prior_hit", "off_chance", "off_rare", "off_common",
                           "off_area"), "– (no location prior in this profile)")
    mix = off_table = None
for name, text in texts.items():
    glue(name, text, display=False)
glue("prior_hit_all", "–" if prior_hits is None else
     f"{prior_hits.mean():.3f}", display=False)
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

# %% tags=["hide-input"]
if off is not None:
    tops = offprior.top_mass_regions(cs.prior)
    fig, axes = plt.subplots(1, max(1, len(off.maps)), squeeze=False,
                             figsize=(6.8, 2.3))
    for c, ax in enumerate(axes[0]):
        label = off.pairs.table.label.iloc[c]
        ax.imshow(off.off.pixels.pixels[off.pairs.table.row.iloc[c]], cmap="gray")
        ax.imshow(off.maps[c], cmap="inferno", alpha=0.5, vmin=0, vmax=1)
        ax.contour(tops[label], levels=[0.5], colors="#66c2a5", linewidths=1,
                   linestyles="--")
        ax.contour(off.pairs.masks[c], levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(f"{textwrap.fill(label, 16)}\nhit {off.hits['ft'][c]:.2f}",
                     fontsize=9)
        ax.set_axis_off()
else:
    fig, ax = plt.subplots(figsize=(6.8, 1.0))
    ax.text(0.5, 0.5, "no off-prior pairs in this profile", ha="center", va="center")
    ax.set_axis_off()
fig.tight_layout()
glue("fig_offprior", fig, display=False)
plt.close(fig)
mix if mix is None else mix.style.format({"off-prior share": "{:.0%}"})

# %% [markdown]
# ```{glue:figure} fig_offprior
# :name: fig-offprior
#
# Off-prior test pairs: the image with the fine-tuned model's Grad-CAM map (colour map
# *inferno*), the true region (white) and the location prior's top-mass region for that
# label (dashed green), each with its hit. By the selection rule at most
# {glue:text}`off_max_overlap` of each region lies inside the dashed outline.
# ```


# %% [markdown]
# ## Verdicts
#
# Each verdict is a finding record ({mod}`helpers.analysis.findings`): a claim, its estimate
# with a 95% CI, a rule on the CI, and a negative control on the same report resamples. A
# finding holds when its own CI clears the rule *and* its paired difference from the control
# clears the margin declared in chapter 1, with a control powered to show that margin
# ({func}`helpers.saliency.sanity.sanity_findings`). All are read on Grad-CAM (the original
# study's method) and the hit rate; the positive control's checks are validation checks,
# not findings (the results page leaves them out of the family that Holm's adjustment
# counts). "Beats the location prior" is decided on the off-prior pairs; its row on all test
# pairs, where the renderer favours the prior, is kept and labelled "(all test pairs)", an
# exploratory row outside the family.

# %%
records = sanity.sanity_findings(cs, hits, prior_hits, copies, curves, off, n_boot)
for key in cs.names:
    failed = key in cs.scorers and not sanity.copies_ok(copies, key)
    for tag, finding in (("prior", "beats the location prior"),
                         ("prior_all", f"beats the location prior{sanity.ALL_PAIRS}"),
                         ("rand", "model randomisation")):
        text = sanity.verdict_text(records, f"{key}: {finding}", failed)
        glue(f"v_{key}_{tag}", text, display=False)
glue("v_data_rand", sanity.verdict_text(records, "ft: data randomisation"),
     display=False)
glue("control_reading", sanity.control_reading(records, cs, off), display=False)
glue("data_rand_reading", sanity.data_randomisation_reading(records), display=False)
verdicts = findings.findings_table(findings.as_frame(records, profile, study.info.id),
                                   with_model=False).drop(columns="after Holm")
findings.styled(verdicts)

# %% [markdown]
# **Read the positive control first:** {glue:text}`control_reading`.
#
# **The permuted-label model.** {glue:text}`data_rand_reading`

# %%
params = {"model": study.info.spec, "style": style, "limit": limit, "n_boot": n_boot,
          "max_pairs": max_pairs, "cascade_pairs": cascade_pairs,
          "zero_shot_classifier": cs.zs_name, "k_folds": k_folds}
written = [sanity.write_record(arts.grad_cam_sanity, cs, curves, step_health, copies,
                               off, stamp, params),
           findings.write_findings(arts.findings(sanity.CHAPTER), records, stamp)]
print("wrote", ", ".join(display.output_name(p) for p in written),
      "in the output folder")

# %% [markdown]
# ## What it means, and what it cannot mean
#
# A setting whose maps beat the location prior *and* its randomised copies uses what the
# model learned to point at the finding. A setting that fails either has maps that do not
# show where its evidence is, or evidence that is not local: the two cannot be told apart
# from these scores alone, which is why the positive control matters. If the control passes,
# the methods and scores can detect localisation on these images; a failing setting is then
# a statement about the setting, not about the method. In `demo` the images are phantoms and
# the model is tiny: nothing here is a statement about BiomedCLIP. The off-prior pairs are
# selected from the renderer's own output, not drawn by a changed renderer: they are the
# tail of its position distribution, mostly small lung findings, and the findings that least
# often leave the prior's mass ({glue:text}`off_rare` of their examined pairs) are judged
# almost only by the all-test-pairs row, with the renderer's thumb on the scale. A
# randomised copy that hits above the chance level is no contradiction: a re-drawn tower
# still responds to bright, high-contrast structure, and the phantoms' lesions are such
# structure.
#
# ## Summary
#
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
#   pairs: {glue:text}`v_lp_prior_all`; against its randomised copies: {glue:text}`v_lp_rand`.
# - Fine-tuned against the prior on off-prior pairs: {glue:text}`v_ft_prior`; on all test
#   pairs: {glue:text}`v_ft_prior_all`; against its randomised copies:
#   {glue:text}`v_ft_rand`; data randomisation (permuted labels): {glue:text}`v_data_rand`.
#
# ## What's next
#
# The {doc}`07_results` page gathers every chapter's numbers and findings beside the
# original study's, and adjusts the verdicts for the number of findings tested.
#
# ## Exercises
#
# ```{exercise}
# :label: ex-sanity-bar
#
# On the off-prior pairs the location prior hits {glue:text}`off_prior_hit`. How would the
# verdict
# "beats the location prior" change if a map had only to beat the prior, not the better of
# the prior and the grid chance level? Compute the fine-tuned model's estimate both ways.
# ```
#
# ```{solution-start} ex-sanity-bar
# :class: dropdown
# ```

# %%
if off is not None:
    against_prior = off.hits["ft"] - off.prior_hit
    against_bar = off.hits["ft"] - np.maximum(off.prior_hit, off.chance)
    print("fine-tuned hit − prior:", off.mean(against_prior, n_boot).format())
    print("fine-tuned hit − max(prior, grid chance):",
          off.mean(against_bar, n_boot).format())
    glue("bar_gap", off.mean(off.chance - np.minimum(off.prior_hit, off.chance),
                             n_boot).format(), display=False)
else:
    print("no off-prior pairs in this profile")
    glue("bar_gap", "– (no off-prior pairs in this profile)", display=False)

# %% [markdown]
# The two estimates differ by the grid chance level wherever the prior misses
# ({glue:text}`bar_gap` on average): against the prior alone, any map that hits anything
# clears the rule, even random grid values. The rule on the better of the two asks for hits
# beyond what chance gives; the margin against the randomised copies then asks for hits
# beyond what an untrained tower gives.
#
# ```{solution-end}
# ```
