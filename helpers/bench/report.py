"""Tables of the benchmark page, read from ``benchmarks/results.json`` (what ``make bench`` and
``python -m helpers.bench.at_scale record`` wrote).

The file keeps one entry per device (:func:`helpers.bench.timing.device_key`); each function below
takes the ``devices`` mapping (device name -> that device's results) and returns one
``pandas.DataFrame`` of the page, indexed by device. A table whose measurements no device has
made is empty (``len(df) == 0``); the page says what it waits for. Times are seconds unless a
column names another unit; rates are images per second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from helpers.bench.finetune_timing import SEED_FINETUNE_MIN

Devices = dict[str, dict[str, Any]]
EMBEDDING_MODELS = {"embedding_tiny": "demo model (tiny)",
                    "embedding_biomedclip_size": "BiomedCLIP-size ViT-B/16"}


def read_results(path: Path) -> dict:
    """The results file's content in the per-device format (an older single-device file becomes one
    device entry); ``{}`` when absent. A file that is not JSON is an error naming it. The one
    reader of the file: ``make bench`` and ``helpers.bench.at_scale record`` update what it returns."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it or pass another --out") from None
    if "devices" not in data:
        m = data.get("machine", {})
        data = {"devices": {m.get("key", f"{m.get('device', 'unknown')} ({m.get('cpu_count', '?')} cores)"): data}}
    return data


def load_devices(path: Path) -> Devices:
    """``{device name: results}`` from the benchmark file, which must exist."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make bench` first")
    return read_results(path)["devices"]


def benched(devices: Devices) -> Devices:
    """The devices that ran ``make bench`` (not only a full-profile run)."""
    return {k: r for k, r in devices.items() if "probe_fit" in r}


def latest_device(devices: Devices) -> str | None:
    """The device whose ``make bench`` ran last (by its machine's date), or ``None``."""
    dated = {k: r.get("machine", {}).get("date") or "" for k, r in benched(devices).items()}
    return max(dated, key=dated.get) if dated else None


def gpu_names(devices: Devices) -> list[str]:
    """Devices whose key names a CUDA device."""
    return [k for k in devices if k.startswith("cuda")]


def machines(devices: Devices) -> pd.DataFrame:
    """One row per device: date, cores, threads, torch version, load average, smoke mode."""
    def row(r: dict) -> dict:
        m = r["machine"]
        return {"date": m.get("date", r.get("date")), "CPU cores": m["cpu_count"],
                "torch threads": m["torch_threads"], "torch": m["torch"],
                "load average at start": m.get("load_avg_1min_start", float("nan")),
                "smoke mode": m.get("smoke", r.get("smoke"))}
    return pd.DataFrame({k: row(r) for k, r in devices.items()}).T


def embedding(devices: Devices) -> pd.DataFrame:
    """Embedding extraction, ours against the original study's loop, per (device, model, variant)."""
    rows = []
    for k, r in devices.items():
        for key, name in EMBEDDING_MODELS.items():
            if key in r:
                rows += _embedding_rows(k, name, r[key])
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index(["device", "model", "variant"])


def _embedding_rows(device: str, model: str, e: dict) -> list[dict]:
    variants = e.get("variants") or {"auto": {"img_per_s": e["ours_warm_img_per_s"],
                                              "speedup_warm": e["speedup_warm"],
                                              "max_rel_diff": float("nan")}}
    first = next(iter(variants))
    return [{"device": device, "model": model, "variant": v, "images": e["n_images"],
             "batch": e.get("batch_size", float("nan")), "original loop (img/s)": e["seed_img_per_s"],
             "ours warm (img/s)": x["img_per_s"], "speed-up warm": x["speedup_warm"],
             "speed-up cold": e["speedup_cold"] if v == first else float("nan"),
             "max rel. diff": x["max_rel_diff"]}
            for v, x in variants.items()]


def best_vitb_rate(emb: pd.DataFrame) -> dict[str, float]:
    """The best warm rate (img/s) of the BiomedCLIP-size tower on each device."""
    if emb.empty:
        return {}
    vitb = emb.xs(EMBEDDING_MODELS["embedding_biomedclip_size"], level="model")
    return vitb["ours warm (img/s)"].groupby(level="device").max().to_dict()


def bare_forward(devices: Devices) -> pd.DataFrame:
    """The bare BiomedCLIP-size forward (random tensors on the GPU), per (device, variant)."""
    runs = {(k, v): x for k, r in devices.items()
            for v, x in r.get("bare_forward_biomedclip_size", {}).items()}
    return pd.DataFrame(runs).T


def vitb_gflops(devices: Devices) -> float | None:
    """GFLOP per image of one BiomedCLIP-size image-tower forward (torch's counter), if counted."""
    for r in devices.values():
        if "flops_biomedclip_size" in r:
            return r["flops_biomedclip_size"]["image_forward_gflops"]
    return None


def probe_fit(devices: Devices) -> pd.DataFrame:
    """Probe-fit times per (device, embedding size)."""
    fits = {(k, f"{d}-d"): v for k, r in benched(devices).items() for d, v in r["probe_fit"].items()}
    return pd.DataFrame(fits).T


def finetune_steps(devices: Devices) -> pd.DataFrame:
    """Seconds per demo fine-tuning step, ours against the original study's, one column per device."""
    cols = {}
    for k, r in benched(devices).items():
        f = r["finetune_tiny"]
        by_threads = {f"ours s/step, {t} thread(s)": v
                      for t, v in f.get("ours_step_s_by_threads", {}).items() if t != "auto"}
        cols[k] = {"batch size": f["batch_size"], "steps timed": f["steps"],
                   "original s/step": f["seed_step_s"], "ours s/step": f["ours_step_s"],
                   "speed-up": f["speedup"], **by_threads,
                   "load average": f.get("load_avg_1min", float("nan")),
                   "ours: one epoch (s, extrapolated)": f["ours_epoch_s_extrapolated"],
                   "ours: 30 epochs (min, extrapolated)": f["ours_30_epochs_min_extrapolated"],
                   "original: 30 epochs (min, extrapolated)": f["seed_30_epochs_min_extrapolated"]}
    return pd.DataFrame(cols)


def finetune_end_to_end(devices: Devices) -> pd.DataFrame:
    """30-epoch fine-tuning at BiomedCLIP size per (device, batch size); GPU runs only."""

    runs = {}
    for k, r in devices.items():
        if "finetune_e2e" not in r or r["machine"].get("smoke"):
            continue
        for bs, x in r["finetune_e2e"]["runs"].items():
            runs[(k, bs)] = {
                "minutes": x["wall_min"],
                f"speed-up vs the original study's {SEED_FINETUNE_MIN} min": x["speedup_vs_seed_reported"],
                "s/epoch (median)": x["epoch_s_median"], "first epoch s": x["first_epoch_s"],
                "peak GPU memory (GB)": x["peak_mem_GB"],
                "compile": x["fast_path"].get("compile"), "final val AUROC": x["val_auroc"][-1]}
    return pd.DataFrame(runs).T


def step_variants(devices: Devices) -> pd.DataFrame:
    """Fast-path variants of one BiomedCLIP-size step per (device, batch size)."""
    runs = {(k, bs): v for k, r in devices.items()
            for bs, v in r.get("step_variants_biomedclip_size", {}).items()}
    return pd.DataFrame(runs).T


def step_profile(devices: Devices) -> pd.DataFrame:
    """The profiler's operators with the most self CPU time in a demo step, per device."""
    parts = {k: pd.DataFrame(r["profile_tiny_step"]) for k, r in benched(devices).items()}
    return pd.concat(parts) if parts else pd.DataFrame()


def book_times(devices: Devices) -> tuple[pd.DataFrame, float | None, bool]:
    """(seconds per chapter, total seconds or None, whether every chapter was timed) of the
    last ``make book`` any device recorded."""
    bk = next((r["book"] for r in devices.values() if r.get("book")), None)
    if not bk:
        return pd.DataFrame(), None, False
    table = pd.Series(bk["chapters_s"], name="seconds").to_frame()
    return table, bk["total_s"], bool(bk["complete"])


def _runs(r: dict) -> list[tuple[str, dict]]:
    """A device's entry and the one it replaced (``previous``), labelled for the tables."""
    return [("this run", r)] + ([("previous run", r["previous"])] if r.get("previous") else [])


def load_study_times(devices: Devices) -> pd.DataFrame:
    """Warm ``load_study("demo")`` per (device, run): seconds of the call (median, min, max over
    fresh processes), of importing :mod:`helpers.book.study` (torch included), of the first call
    (which may have built caches), the load average, and the slowest imports the call made."""
    rows = {}
    for k, r in devices.items():
        for run, x in _runs(r):
            ls = x.get("load_study")
            if not ls:
                continue
            top = ls.get("imports_during_call", {}).get("top", [])
            rows[(k, run)] = {
                "date": x.get("machine", {}).get("date"), "call s (median)": ls["call_s_median"],
                "call s (min)": ls["call_s_min"], "call s (max)": ls["call_s_max"],
                "processes": ls["repeats"], "import s (median)": ls["import_s_median"],
                "first call s": ls["first_s"],
                "load average": max(ls["load_avg_1min"]) if ls["load_avg_1min"] else float("nan"),
                "model loaded": "yes" if ls["model_loaded"] else "on first use",
                "imports in the call (s)": ls.get("imports_during_call", {}).get("total_s"),
                "slowest import": f"{top[0]['module']} ({top[0]['seconds']:.2f} s)" if top else "–"}
    return pd.DataFrame(rows).T


def _book(r: dict) -> dict:
    return r.get("book") or {}


def book_chapters(devices: Devices) -> pd.DataFrame:
    """Seconds per (device, chapter) of the last recorded book run, the previous run's beside,
    and the load average when each chapter started and ended; a ``total`` row per device."""
    rows = {}
    for k, r in devices.items():
        now, prev = _book(r), _book(r.get("previous") or {})
        if not now:
            continue
        for c, sec in now["chapters_s"].items():
            d = now.get("chapters", {}).get(c, {})
            rows[(k, c)] = {"seconds": sec, "previous run (s)": prev.get("chapters_s", {}).get(c),
                            "load at start": d.get("load_avg_1min_start"),
                            "load at end": d.get("load_avg_1min_end"), "date": d.get("date")}
        rows[(k, "total")] = {"seconds": now["total_s"], "previous run (s)": prev.get("total_s"),
                              "load at start": None, "load at end": None, "date": None}
    df = pd.DataFrame(rows).T
    return df.astype({c: float for c in ("seconds", "previous run (s)", "load at start", "load at end")}) \
        if len(df) else df


CODE_WIDTH = 34
"""Characters of a cell's first statement shown in the costliest-cells table."""


def _short(code: str, width: int = CODE_WIDTH) -> str:
    """A cell's first statement cut to ``width`` characters (with an ellipsis) for a table."""
    return code if len(code) <= width else code[:width - 1].rstrip() + "…"


def costliest_cells(devices: Devices) -> pd.DataFrame:
    """The three costliest cells of each chapter per (device, chapter, rank), this run's and the
    previous run's side by side (position and seconds; its code is the same cell's when the
    position is): the cell's position among the chapter's code cells, its seconds, the
    heading it stands under and its first statement
    (:func:`bench_book.cell_label`). ``this run's notebook`` says whether the executed
    notebook the cells were read from is the one the chapter's time belongs to."""
    rows = {}
    for k, r in devices.items():
        now, prev = _book(r).get("chapters", {}), _book(r.get("previous") or {}).get("chapters", {})
        for c, d in now.items():
            before = prev.get(c, {}).get("top_cells", [])
            for i, cell in enumerate(d.get("top_cells", [])):
                p = before[i] if i < len(before) else {}
                rows[(k, c, i + 1)] = {
                    "cell": cell["cell"], "seconds": cell["seconds"],
                    "section": cell.get("section") or "–", "code": _short(cell["code"]),
                    "previous run: cell": p.get("cell"), "previous run: seconds": p.get("seconds"),
                    "this run's notebook": "yes" if d.get("cells_from_this_run") else "no"}
    return pd.DataFrame(rows).T


def full_runs(devices: Devices) -> dict[str, dict]:
    """Each device's ``full_profile_run`` record (``python -m helpers.bench.at_scale record``)."""
    return {k: r["full_profile_run"] for k, r in devices.items() if r.get("full_profile_run")}


def full_run_conditions(runs: dict[str, dict]) -> pd.DataFrame:
    """One column per device: what the full-profile run ran on and with."""
    return pd.DataFrame({k: _conditions(f) for k, f in runs.items()})


def _conditions(f: dict) -> dict:
    c, m = f["conditions"], f["conditions"]["model"]
    dates = sorted(x["date"] for x in f["chapters"].values())
    others = ", ".join(f"{k} {v}" for k, v in c["params"].items()
                       if k not in ("profile", "model", "limit", "annotations"))
    threads = ", ".join(c.get("omp_num_threads") or ["unknown"]).replace("None", "unset")
    return {"run": f["label"], "dates": f"{dates[0]} to {dates[-1]}" if dates else "–",
            "GPU": "yes" if c["gpu"] else "no (CPU only)",
            "limit (images per split)": c["limit_per_split"] or "none (every image)",
            "model parameters (M)": f"{m['n_params'] / 1e6:.1f}" if "n_params" in m else "–",
            "weights": m.get("weights", "–"),
            "images": f"{c['images']['n_png']} {c['images']['what']}",
            "PNG size (px)": "x".join(map(str, c["images"]["png_px"] or [])) or "–",
            "other parameters": others, "OMP_NUM_THREADS": threads,
            "memory measured": c["memory"],
            "complete": "every chapter" if f["complete"] else "not every chapter (see the table)"}


def full_run_chapters(runs: dict[str, dict]) -> pd.DataFrame:
    """Seconds and peak memory per (device, chapter) of the full-profile runs."""
    rows = {(k, ch): {"seconds": x["seconds"], "peak RSS (MiB)": x["peak_rss_mib"],
                      "peak GPU memory in use (MiB)": x["peak_gpu_used_mib"],
                      "load average at start": x.get("load_avg_1min_start")}
            for k, f in runs.items() for ch, x in f["chapters"].items()}
    return pd.DataFrame(rows).T


def full_run_summary(device: str, f: dict) -> str:
    """One sentence: total minutes, chapters, peak RSS and limit of one full-profile run."""
    limit = f["conditions"]["limit_per_split"] or "none"
    return (f"{f['label']} on {device}: {f['total_s'] / 60:.1f} min over {len(f['chapters'])} "
            f"chapters, peak RSS {f['peak_rss_mib'] / 1024:.1f} GiB, limit {limit} per split")
