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
# executed, gathered into the seed study's table {cite}`sadman2025interpreting`. Our rows
# show the test value and its 95% bootstrap interval (resampling reports; for the
# fine-tuned model also its training seeds); the seed's rows are the values the paper
# reports for BiomedCLIP on its own split, which differs from ours, so they compare only
# roughly. Below them stand the image-independent reference scorers of chapter 2, computed
# on our split: a row that does not beat them has learned nothing from the images for that
# metric. Rows from the `demo` profile come from synthetic images and a small proxy model
# ({doc}`../demo_profile`): they show the *method* at work and are **not** BiomedCLIP
# results. A `full` run's files, or a second model's, appear here without any code change.

# %% tags=["parameters"]
profile = "demo"  # whose stamp heads this page; the tables list every profile

# %% tags=["hide-input"]
import json

import matplotlib.pyplot as plt
from myst_nb import glue

from helpers import artefacts, findings, results
from helpers.config import get_profile
from helpers.stamp import show_stamp

get_profile(profile)
table = results.gather()
references = results.gather_references()
if table.empty:
    raise FileNotFoundError(f"no metrics JSON under {artefacts.output_root()}: "
                            "run chapters 2-5 first (python -m helpers.run)")
mine = [folder for p, _, folder in artefacts.all_pairs() if p == profile]
stamps = [json.loads(f.read_text())["stamp"] for d in mine
          for f in sorted(d.glob("*.json")) if "stamp" in json.loads(f.read_text())]
if stamps:
    show_stamp(stamps[0])
pairs = sorted({(p, m) for p, m in zip(table.profile, table.model_id)})
glue("pairs_found", ", ".join(f"`{p}` · {m}" for p, m in pairs), display=False)
results.results_table(table, references)

# %% [markdown]
# Profiles and models found: {glue:text}`pairs_found`. Inter- and intra-class distances and
# their ratio come from chapter 5; the other metrics from chapters 2-4. F1 (macro) is the
# column to compare with the seed's "F1".
#
# Training time (linear-probe fit, mean fine-tuning time per seed) depends on the machine and
# on what else ran beside it, so it stands in its own table, comparable only between rows run
# on the same machine:

# %% tags=["hide-input", "nbval-ignore-output"]
results.training_times(table)

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
    # a percentile interval need not contain the estimate (tiny runs): no negative bar
    cis = list(zip(sub.auroc_macro, sub.auroc_macro_ci))
    cis = [(v, c if c and None not in c else None) for v, c in cis]
    lo = [max(v - c[0], 0) if c else 0 for v, c in cis]
    hi = [max(c[1] - v, 0) if c else 0 for v, c in cis]
    ax.errorbar(x, sub.auroc_macro, yerr=[lo, hi], fmt="o", capsize=4,
                label=f"{prof} · {mid}")
ax.axhline(0.5, color="#999999", lw=0.8, ls="--")
ax.set_xticks(range(3), ["zero-shot", "linear probe", "fine-tune"])
ax.set_ylabel("test macro AUROC (95% CI)")
ax.legend(fontsize=7)
ax.set_title("Macro AUROC by setting (dashed: chance)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The seed's findings, each beside its negative control
#
# Every chapter tests one of the seed's claims and writes a record through
# {mod}`helpers.findings`: the estimate with its 95% interval, the rule that decides whether
# it holds, and a negative control (the same rule applied where the claim must not hold).
# A finding whose control holds too is *not established*. The table is generated from those
# records, with no per-chapter code:

# %% tags=["hide-input"]
all_findings = findings.gather_findings()
glue("n_findings", len(all_findings), display=False)
glue("n_established", int(all_findings.verdict.str.startswith("holds").sum())
     if len(all_findings) else 0, display=False)
findings.styled(findings.findings_table(all_findings))

# %% [markdown]
# Of {glue:text}`n_findings` findings tested across all runs, {glue:text}`n_established`
# hold with their control failing as it should. Each chapter explains its test and what it
# cannot show: {doc}`02_zero_shot` (over-prediction), {doc}`03_linear_probe`
# (co-occurrence), {doc}`04_fine_tune` (separation), {doc}`05_embeddings` (geometry) and
# {doc}`06_grad_cam` (localisation).
