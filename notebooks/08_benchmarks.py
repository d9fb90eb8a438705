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
# # Benchmarks
#
# The original study reports 6.10 min for linear probing and 15.47 min for fine-tuning
# {cite}`sadman2025interpreting`. This page shows how fast this project's paths are, measured
# side by side with the original study's way of doing the same work, **in one run, on the same images and
# the same machine** (`make bench`, which writes `benchmarks/results.json`). The file keeps one
# entry per device (a CPU and, where one was available, a GPU), and this page shows every entry
# under its device's name, each beside the run before it on the same device. The benchmark
# sizes itself to the device: a CPU runs small sizes, a GPU runs at least 2,048 images through
# the BiomedCLIP-size image tower and fine-tunes a BiomedCLIP-size model end to end for 30
# epochs. Ratios are comparable across machines; absolute times are not. GPU figures appear
# only where a GPU measured them: nothing on this page is estimated.

# %% tags=["parameters"]
results = "benchmarks/results.json"  # the file `make bench` wrote (repository-relative)

# %% tags=["hide-input"]
from IPython.display import Markdown, display
from myst_nb import glue

from helpers.bench import report
from helpers.config import REPO_ROOT

devices = report.load_devices(REPO_ROOT / results)
gpus = report.gpu_names(devices)
no_gpu = ("not measured yet: this benchmark has only run on a CPU so far, "
          "so every GPU figure waits for a run on a machine with a GPU")
glue("bench_devices", "; ".join(devices), display=False)
glue("gpu_status", f"measured on {', '.join(gpus)}" if gpus else no_gpu, display=False)
report.machines(devices).style.format(precision=2)

# %% [markdown]
# Devices in the file: {glue:text}`bench_devices`. GPU results: {glue:text}`gpu_status`.
# The CPU is shared by several processes; the load average at the start of the run says how busy
# it was, and CPU times are read with it in mind.
#
# ## Embedding extraction
#
# *Original loop*: the original study's way, one image at a time, PIL decode and open_clip
# preprocessing inside the loop.
# *Ours*: every image decoded and preprocessed once into a uint8 cache; batches of uint8 pixels
# go to the device (read ahead into pinned memory on a GPU) and are normalised there, under
# `torch.inference_mode`. Variants: `auto` (fp32 on a CPU, bf16 autocast on a GPU), `autocast`
# (bf16 autocast; on a CPU only where it has bf16 instructions), `bf16` (a bf16 copy of the
# weights), `+compile` (`torch.compile`, timed warm). *Cold* includes building the cache; *warm*
# is every later run. Speed-ups are per image against the original study's loop; "max rel. diff" is the
# largest deviation from the original study's fp32 embeddings, relative to their largest value.

# %% tags=["hide-input"]
emb = report.embedding(devices)
best = report.best_vitb_rate(emb)
rate = {k: f"{v:,.0f}" if v >= 100 else f"{v:.1f}" for k, v in best.items()}
glue("emb_vitb_best", "; ".join(f"{v} img/s on {k}" for k, v in rate.items())
     or "(not measured)", display=False)
emb.style.format({"images": "{:.0f}", "batch": "{:.0f}", "max rel. diff": "{:.1e}"},
                 precision=2, na_rep="–")

# %% [markdown]
# Best warm rate at BiomedCLIP's size: {glue:text}`emb_vitb_best`. At the small size the original study's
# loop is dominated by decoding and per-call overhead, which the cache and batching remove. At
# ViT-B/16 size a CPU is compute-bound in both paths (FLOPs per image below): a batch of one
# already keeps its cores busy, so only lower precision buys a real factor there. On a GPU the
# data path must keep up with the tower, which the bare forward pass (random tensors already on
# the GPU, no data path) measures:

# %% tags=["hide-input"]
gflops = report.vitb_gflops(devices)
glue("vitb_gflops", f"{gflops:.1f}" if gflops else "(not counted)", display=False)
bare = report.bare_forward(devices)
bare if len(bare) else Markdown("*No GPU has run the bare forward pass yet.*")

# %% [markdown]
# One forward pass of the BiomedCLIP-size image tower costs {glue:text}`vitb_gflops` GFLOP per
# image (torch's FLOP counter).
#
# ## Linear probe
#
# Fitting the probe (14 labels × 4 values of $C$, chosen on validation) on embeddings of IU-Xray's
# split sizes. *Ours* fits every label at once with a batched L-BFGS (torch, float64; on the GPU
# when there is one), the values of $C$ warm-started in turn; the *sklearn loop* is the per-label
# `LogisticRegression` fit that it replaced. Both minimise the same objective; the last column is
# the largest difference of their training logits at the chosen $C$ (sklearn's default tolerance
# stops short of the optimum at large $C$, ours goes further).

# %% tags=["hide-input"]
probe = report.probe_fit(devices)
fit_512 = probe.xs("512-d", level=1)["fit_s"] if len(probe) else {}
glue("probe_s_512", "; ".join(f"{v:.2f} s on {k}" for k, v in dict(fit_512).items())
     or "(not measured)", display=False)
probe.style.format(precision=3, na_rep="–")

# %% [markdown]
# At BiomedCLIP's embedding size (512) the whole grid fits in {glue:text}`probe_s_512`. The
# original study's 6.10 min for linear probing was spent mostly re-extracting embeddings, which the cache
# does once.
#
# ## Fine-tuning steps
#
# Seconds per optimisation step of the demo model (contrastive objective, Adam): the original study's
# DataLoader decodes and preprocesses PNGs at every step and synchronises with the host to log the
# loss at every step; ours reads the uint8 cache and keeps the losses on the device until the
# epoch ends. On a CPU, ours is also timed at each thread count: on a shared machine, OpenMP
# threads that outnumber the free cores spin at every barrier, so `finetune()` picks the thread
# count from the load before every epoch. Epoch and 30-epoch times are extrapolated to IU-Xray's
# training split (labelled as such).

# %% tags=["hide-input"]
report.finetune_steps(devices).style.format(precision=3, na_rep="–")

# %% [markdown]
# ### Fine-tuning at BiomedCLIP size, end to end
#
# `finetune()` as chapter 4 calls it (data, augmentation, validation every epoch, checkpoints) for
# 30 epochs over IU-Xray's split sizes with a BiomedCLIP-size model (random weights), per batch
# size, next to the original study's reported 15.47 min. The step variants show which part of the fast path
# pays: fused Adam, `torch.compile`, augmentation on the host or on the GPU, and the cost of one
# checkpoint of model and optimiser.

# %% tags=["hide-input"]
e2e = report.finetune_end_to_end(devices)
e2e_missing = "not measured yet (it runs on a GPU only; no GPU has run this benchmark)"
glue("e2e_status", "measured, table below" if len(e2e) else e2e_missing, display=False)
(e2e.style.format(precision=2, na_rep="–") if len(e2e)
 else Markdown("*Fine-tuning at BiomedCLIP size waits for a run on a GPU.*"))

# %% [markdown]
# End-to-end fine-tuning at BiomedCLIP size: {glue:text}`e2e_status`.

# %% tags=["hide-input"]
variants = report.step_variants(devices)
(variants.style.format(precision=2) if len(variants)
 else Markdown("*The step variants at BiomedCLIP size wait for a run on a GPU.*"))

# %% [markdown]
# ### Where a demo fine-tuning step spends its time
#
# The torch profiler's operators with the most self CPU time over a step of the demo model, on
# each device:

# %% tags=["hide-input"]
profile = report.step_profile(devices)
profile.style.format({"self_cpu_ms": "{:.1f}", "share": "{:.1%}"})

# %% [markdown]
# Multi-GPU runs use `torchrun --nproc_per_node=N -m helpers.protocols.distributed finetune --profile full`
# (see {doc}`../reproducing`).
#
# ## The whole demo book
#
# Execution time of every chapter, as the runner recorded it at the last `make book` (or
# `python -m helpers.book.runner`) on each device, beside the run recorded before it, with the machine's
# 1-minute load average when the chapter started and when it ended. On two cores a load near 1
# is the chapter itself; more means other work shared the machine, and the times are read with
# that in mind.

# %% tags=["hide-input"]
book, book_s, book_complete = report.book_times(devices)
if book_s is None:
    book_text = "(not recorded: run `make book`, then `make bench`)"
elif book_complete:
    book_text = f"{book_s / 60:.1f} min"
else:
    book_text = (f"not recorded in full (only {len(book)} chapters were executed since "
                 "the last `make book`; their times are above)")
glue("book_min", book_text, display=False)
chapters = report.book_chapters(devices)
(chapters.style.format(precision=1, na_rep="–") if len(chapters)
 else Markdown("*No book run has been recorded yet.*"))

# %% [markdown]
# Whole book: {glue:text}`book_min`.
#
# ### Where each chapter spends its time
#
# On the machine benchmarked last, the three cells of each chapter that took longest
# (papermill's wall time per cell, kept in the
# executed notebook), this run's beside the previous run's. *cell* counts the chapter's code
# cells from the top, *section* is the heading it stands under and *code* its first statement
# (imports and glue calls passed over). A "no" under *this run's notebook* means
# the executed notebook was written by another run than the one timed above (a chapter
# re-executed on its own since).

# %% tags=["hide-input"]
latest = report.latest_device(devices)
cells = report.costliest_cells({latest: devices[latest]} if latest else {})
cells = cells.droplevel(0).dropna(axis=1, how="all") if len(cells) else cells
(cells.style.format(precision=1, na_rep="–") if len(cells)
 else Markdown("*No executed chapter with cell times was found by the benchmark.*"))

# %% [markdown]
# ### A chapter's start: `load_study`
#
# Chapters 2 to 6 start with `load_study(profile)`. It reads the label table, views, frontal
# selection and split from one cached file, keyed by every input they depend on (the report
# archive's bytes, the labeler's rules and version, the parameters), and describes the model
# from a cache, loading the model itself only when a chapter first uses it. It is timed here as
# a chapter meets it, with its caches present: each time in a fresh process, once to warm up
# and then several times; the import of the module (torch included) is counted apart. The
# target is 2 s.

# %% tags=["hide-input"]
starts = report.load_study_times(devices)
now = starts.xs("this run", level=1) if len(starts) else starts
glue("load_study_s", "; ".join(
    f"{r['call s (median)']:.2f} s on {k} (median of {r['processes']} processes, "
    f"load average up to {r['load average']:.1f})" for k, r in now.iterrows())
    or "(not measured yet: run `make bench`)", display=False)
(starts.T.style.format(precision=2, na_rep="–") if len(starts)  # a column per run
 else Markdown("*`load_study` has not been timed yet.*"))

# %% [markdown]
# Warm `load_study("demo")`: {glue:text}`load_study_s`.

# %% [markdown]
# ## The full profile at scale
#
# `python -m helpers.bench.at_scale` runs every chapter on the `full` profile's code path, each
# chapter as its own process, and measures it from outside: wall time and the peak resident
# memory (RSS) of the runner and all its children (the Jupyter kernel, image-decoding workers),
# plus, on a GPU, the device memory in use. It needs no download: the model has
# BiomedCLIP's architecture and size (ViT-B/16 at 224 px, a BERT-base text tower with
# PubMedBERT's vocabulary and 256-token context, embed dim 512) but is built from configs with
# **random weights**, and the images are phantoms written under Open-I's file names, one per image
# id of the label table. Its numbers say how long the code path takes and how much memory it
# needs at this model size, never how well anything classifies. Where no GPU was available, the run
# is on the CPU with a reduced `limit` (images per split), as its conditions below state; the
# commands for the real thing are on {doc}`../reproducing`.

# %% tags=["hide-input"]
full = report.full_runs(devices)
summary = "; ".join(report.full_run_summary(k, f) for k, f in full.items())
not_run = ("not measured yet: run `python -m helpers.bench.at_scale all` "
           "(see Reproducing the paper)")
glue("full_run_status", summary or not_run, display=False)
if full:
    display(report.full_run_conditions(full))
(report.full_run_chapters(full).style.format(precision=1, na_rep="–") if full
 else Markdown("*The full profile at scale has not been run yet.*"))

# %% [markdown]
# Full profile at scale: {glue:text}`full_run_status`. Each chapter's seconds are the runner's
# own record (`outputs/full/run_times.json`); the first chapter to meet an image decodes it into
# the pixel cache, so later chapters read their inputs from there.
