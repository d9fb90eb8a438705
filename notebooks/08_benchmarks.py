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
# The seed study reports 6.10 min for linear probing and 15.47 min for fine-tuning
# {cite}`sadman2025interpreting`. This page shows how fast this project's paths are, measured
# side by side with the seed's way of doing the same work, **in one run, on the same images and
# the same machine** (`make bench`, which writes `benchmarks/results.json`). The file keeps one
# entry per device (a CPU and, when a session had one, a GPU), and this page shows every entry
# under its device's name. The benchmark sizes itself to the device: a CPU runs small sizes, a GPU
# runs at least 2,048 images through the BiomedCLIP-size image tower and fine-tunes a
# BiomedCLIP-size model end to end for 30 epochs. Ratios are comparable across machines; absolute
# times are not. GPU figures appear only where a GPU measured them: nothing on this page is
# estimated.

# %% tags=["parameters"]
results = "benchmarks/results.json"  # the file `make bench` wrote (relative to the repository)

# %% tags=["hide-input"]
import json

import pandas as pd
from myst_nb import glue

from helpers.config import REPO_ROOT

path = REPO_ROOT / results
if not path.is_file():
    raise FileNotFoundError(f"{path} is missing: run `make bench` first")
raw = json.loads(path.read_text())
if "devices" not in raw:  # a file from before results were kept per device
    raw = {"devices": {f"{raw['machine']['device']} ({raw['machine']['cpu_count']} cores)": raw}}
DEV = raw["devices"]
BENCH = {k: r for k, r in DEV.items() if "probe_fit" in r}  # devices that ran `make bench` (not only a full run)
gpus = [k for k in DEV if k.startswith("cuda")]
cpus = [k for k in DEV if not k.startswith("cuda")]


def machine(r):
    m = r["machine"]
    return {"date": m.get("date", r.get("date")), "CPU cores": m["cpu_count"], "torch threads": m["torch_threads"],
            "torch": m["torch"], "load average at start": m.get("load_avg_1min_start", float("nan")),
            "smoke mode": m.get("smoke", r.get("smoke"))}


glue("bench_devices", "; ".join(DEV), display=False)
glue("gpu_status", f"measured on {', '.join(g[6:] for g in gpus)}" if gpus else
     "not measured yet: no GPU was lent to the sessions that ran this benchmark, so every GPU figure "
     "waits for a session with one", display=False)
pd.DataFrame({k: machine(r) for k, r in DEV.items()}).T.style.format(precision=2)

# %% [markdown]
# Devices in the file: {glue:text}`bench_devices`. GPU results: {glue:text}`gpu_status`.
# The CPU is shared by several processes; the load average at the start of the run says how busy
# it was, and CPU times are read with it in mind.
#
# ## Embedding extraction
#
# *Seed*: one image at a time, PIL decode and open_clip preprocessing inside the loop.
# *Ours*: every image decoded and preprocessed once into a uint8 cache; batches of uint8 pixels
# go to the device (read ahead into pinned memory on a GPU) and are normalised there, under
# `torch.inference_mode`. Variants: `auto` (fp32 on a CPU, bf16 autocast on a GPU), `autocast`
# (bf16 autocast; on a CPU only where it has bf16 instructions), `bf16` (a bf16 copy of the
# weights), `+compile` (`torch.compile`, timed warm). *Cold* includes building the cache; *warm*
# is every later run. Speed-ups are per image against the seed's loop; "max rel. diff" is the
# largest deviation from the seed's fp32 embeddings, relative to their largest value.

# %% tags=["hide-input"]
rows = []
for k, r in DEV.items():
    for key, name in (("embedding_tiny", "demo model (tiny)"), ("embedding_biomedclip_size", "BiomedCLIP-size ViT-B/16")):
        if key not in r:
            continue
        e = r[key]
        variants = e.get("variants") or {"auto": {"img_per_s": e["ours_warm_img_per_s"], "speedup_warm": e["speedup_warm"],
                                                  "max_rel_diff": float("nan")}}
        for v, x in variants.items():
            rows.append({"device": k, "model": name, "variant": v, "images": e["n_images"],
                         "batch": e.get("batch_size", float("nan")), "seed (img/s)": e["seed_img_per_s"],
                         "ours warm (img/s)": x["img_per_s"], "speed-up warm": x["speedup_warm"],
                         "speed-up cold": e["speedup_cold"] if v == next(iter(variants)) else float("nan"),
                         "max rel. diff": x["max_rel_diff"]})
emb = pd.DataFrame(rows).set_index(["device", "model", "variant"])
vitb = emb.index.get_level_values("model") == "BiomedCLIP-size ViT-B/16"
best = emb[vitb]["ours warm (img/s)"].droplevel("model")
rate = lambda v: f"{v:,.0f}" if v >= 100 else f"{v:.2f}"  # noqa: E731
glue("emb_vitb_best", "; ".join(f"{rate(best.loc[k].max())} img/s on {k}" for k in DEV if k in best.index.get_level_values(0))
     or "(not measured)", display=False)
emb.style.format({"images": "{:.0f}", "batch": "{:.0f}", "max rel. diff": "{:.1e}"}, precision=2, na_rep="–")

# %% [markdown]
# Best warm rate at BiomedCLIP's size: {glue:text}`emb_vitb_best`. At the small size the seed's
# loop is dominated by decoding and per-call overhead, which the cache and batching remove. At
# ViT-B/16 size a CPU is compute-bound in both paths (FLOPs per image below): a batch of one
# already keeps its cores busy, so only lower precision buys a real factor there. On a GPU the
# data path must keep up with the tower, which the bare forward pass (random tensors already on
# the GPU, no data path) measures:

# %% tags=["hide-input"]
bare = {k: r["bare_forward_biomedclip_size"] for k, r in DEV.items() if "bare_forward_biomedclip_size" in r}
flops = {k: r["flops_biomedclip_size"]["image_forward_gflops"] for k, r in DEV.items() if "flops_biomedclip_size" in r}
glue("vitb_gflops", f"{next(iter(flops.values())):.1f}" if flops else "(not counted)", display=False)
(pd.DataFrame({(k, v): x for k, b in bare.items() for v, x in b.items()}).T if bare else
 pd.DataFrame({"bare forward": ["no GPU has run this benchmark yet"]}))

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
probe = pd.DataFrame({(k, f"{d}-d"): v for k, r in BENCH.items() for d, v in r["probe_fit"].items()}).T
glue("probe_s_512", "; ".join(f"{r['probe_fit']['512']['fit_s']:.2f} s on {k}" for k, r in BENCH.items()
                              if "512" in r["probe_fit"]) or "(not measured)", display=False)
probe.style.format(precision=3, na_rep="–")

# %% [markdown]
# At BiomedCLIP's embedding size (512) the whole grid fits in {glue:text}`probe_s_512`. The
# seed's 6.10 min for linear probing was spent mostly re-extracting embeddings, which the cache
# does once.
#
# ## Fine-tuning steps
#
# Seconds per optimisation step of the demo model (contrastive objective, Adam): the seed's
# DataLoader decodes and preprocesses PNGs at every step and synchronises with the host to log the
# loss at every step; ours reads the uint8 cache and keeps the losses on the device until the
# epoch ends. On a CPU, ours is also timed at each thread count: on a shared machine, OpenMP
# threads that outnumber the free cores spin at every barrier, so `finetune()` picks the thread
# count from the load before every epoch. Epoch and 30-epoch times are extrapolated to IU-Xray's
# training split (labelled as such).

# %% tags=["hide-input"]
ft = {}
for k, r in BENCH.items():
    f = r["finetune_tiny"]
    ft[k] = {"batch size": f["batch_size"], "steps timed": f["steps"], "seed s/step": f["seed_step_s"],
             "ours s/step": f["ours_step_s"], "speed-up": f["speedup"],
             **{f"ours s/step, {t} thread(s)": v for t, v in f.get("ours_step_s_by_threads", {}).items() if t != "auto"},
             "load average": f.get("load_avg_1min", float("nan")),
             "ours: one epoch (s, extrapolated)": f["ours_epoch_s_extrapolated"],
             "ours: 30 epochs (min, extrapolated)": f["ours_30_epochs_min_extrapolated"],
             "seed: 30 epochs (min, extrapolated)": f["seed_30_epochs_min_extrapolated"]}
pd.DataFrame(ft).style.format(precision=3, na_rep="–")

# %% [markdown]
# ### Fine-tuning at BiomedCLIP size, end to end
#
# `finetune()` as chapter 4 calls it (data, augmentation, validation every epoch, checkpoints) for
# 30 epochs over IU-Xray's split sizes with a BiomedCLIP-size model (random weights), per batch
# size, next to the seed's reported 15.47 min. The step variants show which part of the fast path
# pays: fused Adam, `torch.compile`, augmentation on the host or on the GPU, and the cost of one
# checkpoint of model and optimiser.

# %% tags=["hide-input"]
e2e = {(k, bs): {"minutes": x["wall_min"], "speed-up vs seed's 15.47 min": x["speedup_vs_seed_reported"],
                 "s/epoch (median)": x["epoch_s_median"], "first epoch s": x["first_epoch_s"],
                 "peak GPU memory (GB)": x["peak_mem_GB"], "compile": x["fast_path"].get("compile"),
                 "final val AUROC": x["val_auroc"][-1]}
       for k, r in DEV.items() if "finetune_e2e" in r and not r["machine"].get("smoke") for bs, x in r["finetune_e2e"]["runs"].items()}
glue("e2e_status", "measured, table below" if e2e else
     "not measured yet (it runs on a GPU only; no GPU has run this benchmark)", display=False)
(pd.DataFrame(e2e).T.style.format(precision=2, na_rep="–") if e2e else
 pd.DataFrame({"end-to-end fine-tuning at BiomedCLIP size": ["waits for a session with a GPU"]}))

# %% [markdown]
# End-to-end fine-tuning at BiomedCLIP size: {glue:text}`e2e_status`.

# %% tags=["hide-input"]
sv = {(k, bs): v for k, r in DEV.items() for bs, v in r.get("step_variants_biomedclip_size", {}).items()}
(pd.DataFrame(sv).T.style.format(precision=2) if sv else
 pd.DataFrame({"step variants at BiomedCLIP size": ["wait for a session with a GPU"]}))

# %% [markdown]
# ### Where a demo fine-tuning step spends its time
#
# The torch profiler's operators with the most self CPU time over a step of the demo model, on
# each device:

# %% tags=["hide-input"]
pd.concat({k: pd.DataFrame(r["profile_tiny_step"]) for k, r in BENCH.items()}).style.format(
    {"self_cpu_ms": "{:.1f}", "share": "{:.1%}"})

# %% [markdown]
# Multi-GPU runs use `torchrun --nproc_per_node=N -m helpers.distributed finetune --profile full`
# (see {doc}`../reproducing`).
#
# ## The whole demo book
#
# Execution time of every chapter, from the runner's record of the last `make book` on the CPU:

# %% tags=["hide-input"]
bk = next((r["book"] for k, r in DEV.items() if r.get("book")), None)
if bk and bk["complete"]:
    glue("book_min", f"{bk['total_s'] / 60:.1f} min", display=False)
    book_df = pd.Series(bk["chapters_s"], name="seconds").to_frame()
elif bk:
    glue("book_min", f"not recorded in full (only {len(bk['chapters_s'])} chapters were executed since the last "
                     f"`make book`; their times are above)", display=False)
    book_df = pd.Series(bk["chapters_s"], name="seconds").to_frame()
else:
    glue("book_min", "(not recorded: run `make book`, then `make bench`)", display=False)
    book_df = pd.DataFrame()
book_df

# %% [markdown]
# Whole book: {glue:text}`book_min`.

# %% [markdown]
# ## The full profile at scale
#
# `python -m helpers.bench_full` runs every chapter on the `full` profile's code path, each
# chapter as its own process, and measures it from outside: wall time and the peak resident
# memory (RSS) of the runner and all its children (the Jupyter kernel, image-decoding workers),
# plus, on a GPU, the device memory in use. It needs no download: the model has
# BiomedCLIP's architecture and size (ViT-B/16 at 224 px, a BERT-base text tower with
# PubMedBERT's vocabulary and 256-token context, embed dim 512) but is built from configs with
# **random weights**, and the images are phantoms written under Open-I's file names, one per image
# id of the label table. Its numbers say how long the code path takes and how much memory it
# needs at this model size, never how well anything classifies. Where no GPU was lent, the run
# is on the CPU with a reduced `limit` (images per split), as its conditions below state; the
# commands for the real thing are on {doc}`../reproducing`.

# %% tags=["hide-input"]
from IPython.display import display

FULL = {k: r["full_profile_run"] for k, r in DEV.items() if r.get("full_profile_run")}


def full_conditions(f):
    c, m = f["conditions"], f["conditions"]["model"]
    dates = sorted(x["date"] for x in f["chapters"].values())
    return {"run": f["label"], "dates": f"{dates[0]} to {dates[-1]}" if dates else "–",
            "GPU": "yes" if c["gpu"] else "no (CPU only)",
            "limit (images per split)": c["limit_per_split"] or "none (every image)",
            "model parameters (M)": f"{m['n_params'] / 1e6:.1f}" if "n_params" in m else "–",
            "weights": m.get("weights", "–"), "images": f"{c['images']['n_png']} {c['images']['what']}",
            "PNG size (px)": "x".join(map(str, c["images"]["png_px"] or [])) or "–",
            "other parameters": ", ".join(f"{k} {v}" for k, v in c["params"].items()
                                          if k not in ("profile", "model", "limit", "annotations")),
            "OMP_NUM_THREADS": ", ".join(c.get("omp_num_threads") or ["unknown"]).replace("None", "unset"),
            "memory measured": c["memory"],
            "complete": "every chapter" if f["complete"] else "not every chapter (see the table)"}


if FULL:
    glue("full_run_status", "; ".join(
        f"{f['label']} on {k}: {f['total_s'] / 60:.1f} min over {len(f['chapters'])} chapters, peak RSS "
        f"{f['peak_rss_mib'] / 1024:.1f} GiB, limit {f['conditions']['limit_per_split'] or 'none'} per split"
        for k, f in FULL.items()), display=False)
    display(pd.DataFrame({k: full_conditions(f) for k, f in FULL.items()}))
    full_df = pd.DataFrame({(k, ch): {"seconds": x["seconds"], "peak RSS (MiB)": x["peak_rss_mib"],
                                      "peak GPU memory in use (MiB)": x["peak_gpu_used_mib"],
                                      "load average at start": x.get("load_avg_1min_start")}
                            for k, f in FULL.items() for ch, x in f["chapters"].items()}).T
else:
    glue("full_run_status", "not measured yet: run `python -m helpers.bench_full all` (see "
                            "Reproducing the paper)", display=False)
    full_df = pd.DataFrame({"full-profile run at scale": ["not measured yet"]})
full_df.style.format(precision=1, na_rep="–") if FULL else full_df

# %% [markdown]
# Full profile at scale: {glue:text}`full_run_status`. Each chapter's seconds are the runner's
# own record (`outputs/full/run_times.json`); the first chapter to meet an image decodes it into
# the pixel cache, so later chapters read their inputs from there.
