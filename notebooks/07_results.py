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
# Every metrics file that the chapters wrote, for every profile that has been executed, gathered
# into the seed study's table {cite}`sadman2025interpreting`. Our rows show the test value and
# its 95% bootstrap confidence interval (resampling reports); the seed's rows are the values the
# paper reports for BiomedCLIP. Rows from the `demo` profile come from synthetic images and a
# small proxy model ({doc}`../demo_profile`): they show the *method* at work and are **not**
# BiomedCLIP results. A `full` run's files appear here without any code change.

# %% tags=["parameters"]
profile = "demo"  # the profile whose stamp heads this page; the table lists every profile found

# %% tags=["hide-input"]
import json

import matplotlib.pyplot as plt
import pandas as pd
from myst_nb import glue

from helpers import results as R
from helpers.config import get_profile
from helpers.stamp import show_stamp

get_profile(profile)
df = R.gather()
if df.empty:
    raise FileNotFoundError(f"no metrics JSON under {R.output_root()}: run chapters 2-5 first "
                            f"(python -m helpers.run)")
ours = df[df.profile == profile]
if len(ours):
    first = json.loads((R.output_root() / profile / R.SETTINGS[ours.setting.iloc[0]]).read_text())["stamp"]
    show_stamp(first)
glue("profiles_found", ", ".join(f"`{p}`" for p in sorted(df.profile.unique())), display=False)
R.results_table(df)

# %% [markdown]
# Profiles found: {glue:text}`profiles_found`. Inter- and intra-class distances and their ratio
# come from chapter 5; F1, exact match, LRAP, coverage error and AUROC from chapters 2-4; time is
# the training time (linear-probe fit, fine-tuning epochs), comparable only between rows run on
# the same machine.

# %% tags=["hide-input"]
fig, ax = plt.subplots(figsize=(6, 3))
names = {"zs": "zero-shot", "lp": "linear probe", "ft": "fine-tune"}
for i, (prof, sub) in enumerate(df.groupby("profile")):
    sub = sub.set_index("setting").reindex(["zs", "lp", "ft"]).dropna(subset=["auroc_macro"])
    x = [list(names).index(s) + 0.15 * i for s in sub.index]
    # a percentile interval need not contain the point estimate (tiny runs): draw no negative bar
    lo = [max(v - c[0], 0) if c else 0 for v, c in zip(sub.auroc_macro, sub.auroc_macro_ci)]
    hi = [max(c[1] - v, 0) if c else 0 for v, c in zip(sub.auroc_macro, sub.auroc_macro_ci)]
    ax.errorbar(x, sub.auroc_macro, yerr=[lo, hi], fmt="o", capsize=4, label=f"profile {prof}")
ax.axhline(0.5, color="#999999", lw=0.8, ls="--")
ax.set_xticks(range(3), list(names.values()))
ax.set_ylabel("test macro AUROC (95% CI)")
ax.legend(fontsize=8)
ax.set_title("Macro AUROC by setting")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The seed's findings, as tested on each run
#
# Each chapter ends with a test of one of the seed's claims; their verdicts and intervals:

# %% tags=["hide-input"]
rows = []
for prof_dir in sorted(p for p in R.output_root().glob("*") if p.is_dir()):
    for setting, fname in R.SETTINGS.items():
        f = prof_dir / fname
        if not f.is_file():
            continue
        for name, v in (json.loads(f.read_text()).get("findings") or {}).items():
            est = next((v[k] for k in ("ratio", "mean_shift_difference") if k in v), None)
            ci = v.get("ci95")
            if "auroc_diff_vs_lp" in v:
                est, ci = v["auroc_diff_vs_lp"][0], v["auroc_diff_vs_lp"][1:]
            rows.append({"profile": prof_dir.name, "chapter": names[setting], "finding": name,
                         "estimate": est, "95% CI": ci and f"[{ci[0]:.3f}, {ci[1]:.3f}]",
                         "holds": v.get("holds")})
glue("n_findings", len(rows), display=False)
pd.DataFrame(rows)

# %% [markdown]
# *over_prediction*: predicted / true positive labels with the seed's decision rule (holds if the
# CI is above 1); *cooccurrence*: the probe's partner shift minus zero-shot's (holds if the CI is
# above 0); *separation*: fine-tune minus linear-probe macro AUROC (holds if fine-tuning beats
# both other settings with CIs above 0).
