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
# # Re-executing this book
#
# Every chapter is a notebook with a cell of parameters. The book renders copies that
# [papermill](https://papermill.readthedocs.io) executed; you can execute any chapter again with
# other values. The runner checks every name and type before anything runs:
#
# ```bash
# RUN=".venv/bin/python -m helpers.book.runner"
# $RUN                                      # every chapter, demo profile
# $RUN 02_zero_shot -p n_boot 1000          # one chapter, one value
# $RUN 03_linear_probe -p class_weight none
# $RUN 04_fine_tune -p objective bce -p epochs 10
# $RUN --profile full                       # the real study
# $RUN --list-params                        # what the table below shows
# .venv/bin/jupyter-book build .            # re-render the site
# ```
#
# or with papermill directly (any Jupyter kernel of the project's environment; the runner
# registers one called `iuxray-book`):
#
# ```bash
# papermill notebooks/02_zero_shot.ipynb book/chapters/02_zero_shot.ipynb -k iuxray-book \
#     -p profile demo -p n_boot 1000
# ```
#
# Chapters read each other's outputs in order (chapter 3 compares with chapter 2's scores,
# chapter 4 with both, chapters 5-6 load chapter 4's model): after changing a parameter that
# affects one of them, re-run the chapters after it too.
#
# ## Every parameter of every chapter
#
# Read from the chapters' parameter cells when this page was executed, so it cannot drift from
# them:

# %% tags=["hide-input"]
import pandas as pd

from helpers.book import display, runner

rows = []
for c in runner.toc_chapters():
    nb = runner.read_notebook(runner.notebook_path(c))
    for p in runner.declared_parameters(nb).values():
        rows.append({"chapter": c, "parameter": p.name, "default": repr(p.default),
                     "type": p.type_name, "meaning": p.comment.replace("`", "")})
display.table(pd.DataFrame(rows).set_index(["chapter", "parameter"]))  # every row
