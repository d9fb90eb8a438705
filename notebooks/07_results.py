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
# # Results
#
# Every metrics file that the chapters wrote, for every profile and model that has been
# executed, gathered into the original study's table {cite}`sadman2025interpreting`. Our rows
# show the test value and its 95% bootstrap interval (resampling reports; for the
# fine-tuned model also its training seeds); the original study's rows are the values the paper
# reports for BiomedCLIP on its own split, which differs from ours, so they compare only
# roughly. Below them stand the image-independent reference scorers of chapter 2, computed
# on our split: a row that does not beat them has learned nothing from the images for that
# metric. Rows from the `demo` profile come from synthetic images and a small proxy model
# ({doc}`../demo_profile`): they show the *method* at work and are **not** BiomedCLIP
# results. A `full` run's files, or a second model's, appear here without any code change.

# %% tags=["parameters"]
profile = "demo"  # whose stamp heads this page; the tables list every profile

# %% tags=["hide-input"]

import numpy as np
import matplotlib.pyplot as plt
from myst_nb import glue

from helpers.analysis import findings
from helpers.analysis.estimate import Estimate
from helpers.book import artefacts, display, results
from helpers.book.stamp import show_stamp
from helpers.config import get_profile

get_profile(profile)
table = results.gather()
references = results.gather_references()
if table.empty:
    raise FileNotFoundError(f"no metrics JSON under {artefacts.output_root()}: "
                            "run chapters 2-5 first (python -m helpers.book.runner)")
mine = [folder for p, _, folder in artefacts.all_pairs() if p == profile]
stamps = [s for folder in mine for s in artefacts.result_stamps(folder)]
if stamps:
    show_stamp(stamps[0])
pairs = sorted({(p, m) for p, m in zip(table.profile, table.model_id)})
glue("pairs_found", ", ".join(display.run_label(p, m) for p, m in pairs), display=False)
glue("below_floors", results.floor_sentence(table, references), display=False)
groups = results.GROUPS
results.styled(results.results_table(table, references, groups["classification"]))

# %% [markdown]
# The original study's four classification metrics, setting by setting: its rows (shaded,
# *paper: BiomedCLIP, its own split*) stand above this book's (*this run*: profile and
# model). F1 (macro) is the column to compare with the original study's "F1". Profiles and
# models found: {glue:text}`pairs_found`. A value marked ▼ is no better than the best
# image-independent scorer of its run; by name, {glue:text}`below_floors`.
#
# The embedding geometry (chapter 5), the original study's other three columns:

# %% tags=["hide-input"]
results.styled(results.results_table(table, references, groups["geometry"]))

# %% [markdown]
# And the metrics the original study does not report, read against the same floors
# (chapters 2-4):

# %% tags=["hide-input"]
results.styled(results.results_table(table, references, groups["beyond"]))

# %% [markdown]
# Training time (linear-probe fit, mean fine-tuning time per seed) depends on the machine and
# on what else ran beside it, so it stands in its own table, comparable only between rows run
# on the same machine:

# %% tags=["hide-input", "nbval-ignore-output"]
results.styled(results.training_times(table))

# %% [markdown]
#
# ## Models side by side
#
# Test macro AUROC of every model run, setting by setting (each cell: value [95% CI]):

# %% tags=["hide-input"]
results.models_side_by_side(table)

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(6.5, 3.2))
settings = ["zs", "lp", "ft"]
for i, ((prof, mid), sub) in enumerate(table.groupby(["profile", "model_id"])):
    sub = sub.set_index("setting").reindex(settings).dropna(subset=["auroc_macro"])
    x = [settings.index(s) + 0.12 * i for s in sub.index]
    auroc = [Estimate.from_row(r, "auroc_macro") for _, r in sub.iterrows()]
    yerr = np.array([e.error_bar() for e in auroc]).T  # (2, settings), never negative
    ax.errorbar(x, sub.auroc_macro, yerr=yerr, fmt="o", capsize=4,
                label=f"{prof} · {mid}")
ax.axhline(0.5, color="#999999", lw=0.8, ls="--")
ax.set_xticks(range(3), ["zero-shot", "linear probe", "fine-tune"])
ax.set_ylabel("test macro AUROC (95% CI)")
ax.legend(fontsize=9)
ax.set_title("Macro AUROC by setting (dashed: chance)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The original study's findings, each beside its negative control
#
# Every chapter tests one of the original study's claims and writes a record through
# {mod}`helpers.analysis.findings`: the estimate with its 95% interval and the rule it must clear, a
# negative control bootstrapped on the same report resamples, and their paired difference.
# A finding **holds** when its own interval clears the rule, the difference from its control
# clears the margin declared in chapter 1 ({doc}`01_data`, § The findings, declared), and the
# control is *powered* (its interval's half-width below that margin) and not *degenerate* (a
# constant cannot fail). Beside the raw verdict stands the verdict after Holm's adjustment
# over the family of declared findings of the same run (one-sided level 0.025, p-values from
# the normal approximation to each bootstrap distribution). The table is generated from the
# records, with no per-chapter code:

# %% tags=["hide-input"]
all_findings = findings.gather_findings()
is_finding = (all_findings.kind == "finding") if len(all_findings) else []
counted = all_findings[is_finding] if len(all_findings) else all_findings
checks = all_findings[~is_finding] if len(all_findings) else all_findings
declared = (counted[counted.primary.fillna(False).astype(bool)] if len(counted)
            else counted)
glue("n_findings", len(counted), display=False)
glue("n_declared", len(declared), display=False)
glue("n_exploratory", len(counted) - len(declared), display=False)
glue("n_established", int(declared.holds.sum()) if len(declared) else 0, display=False)
n_explo_hold = (int(counted.holds.sum()) - int(declared.holds.sum())
                if len(counted) else 0)
verb = "holds" if n_explo_hold == 1 else "hold"
glue("n_explo_hold", f"{n_explo_hold} of them {verb}", display=False)
glue("n_holm", int(counted.holds_holm.fillna(False).astype(bool).sum())
     if len(counted) else 0, display=False)
underpowered = [not (r.holds or r.control["powered"]) for r in declared.itertuples()]
glue("n_underpowered", sum(underpowered), display=False)
findings.styled(findings.findings_table(counted))

# %% [markdown]
# Of the {glue:text}`n_findings` findings tested across all runs, {glue:text}`n_declared`
# were declared in chapter 1 and {glue:text}`n_exploratory` are exploratory (outside the
# family; {glue:text}`n_explo_hold` by the raw rule). Of the declared ones,
# {glue:text}`n_established` hold by the raw rule and {glue:text}`n_holm` after Holm's
# adjustment; {glue:text}`n_underpowered` could not be established because their control was
# too noisy to have shown an effect of the margin's size (control underpowered), whatever
# their own estimate: on the `demo` test split, a few hundred images, a margin of 0.02 of
# macro AUROC is below what the split can resolve. Holm's adjustment can only weaken a raw
# verdict, so a finding that is not established raw stays so after it. Each chapter explains its test and what
# it cannot show: {doc}`02_zero_shot` (over-prediction), {doc}`03_linear_probe`
# (co-occurrence), {doc}`04_fine_tune` (separation), {doc}`05_embeddings` (geometry) and
# {doc}`06b_sanity` (localisation, on the maps scored in {doc}`06_grad_cam`).
#
# **Validation checks** are not findings: they test the machinery (the scoring against
# oracle maps, the positive control's maps) and are never counted in the family.

# %% tags=["hide-input"]
findings.styled(findings.findings_table(checks).drop(columns=["after Holm"],
                                                     errors="ignore"))
