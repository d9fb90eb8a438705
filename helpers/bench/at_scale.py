"""The ``full`` profile at scale without the real inputs: ``python -m helpers.bench.at_scale``.

Three steps, each its own sub-command (``all`` runs them in order):

* ``setup``: a model of BiomedCLIP's architecture and size built from configs (random weights;
  :data:`bench_finetune.BIOMEDCLIP_SIZE`) in ``<IUXRAY_DATA_DIR>/models/biomedclip-size``;
  ``target``-style phantoms for every image id of the label table, written where the full
  profile reads Open-I's PNGs (``<IUXRAY_DATA_DIR>/openi/images/<image id>.png``); an annotation
  CSV for chapter 6 with one box per connected region of each phantom's finding masks
  (validation and test frontals), in the PNGs' pixels.
* ``run``: every chapter of the book, each as its own ``python -m helpers.book.runner CHAPTER --profile
  full`` process, with the given ``-p`` parameters; wall time and peak memory are measured from
  outside: the resident set size (RSS) of the runner and all its children (the Jupyter kernel,
  image-decoding workers) summed and sampled every ``--interval`` s, and on a machine with
  ``nvidia-smi`` the GPU memory in use (device-wide, so other processes count too). Written to
  ``outputs/full/run_peaks.json``; the runner's own ``run_times.json`` sits beside it.
* ``record``: both files and the run's conditions (device, limit, model size, random weights,
  image size) become the ``full_profile_run`` entry of this device in
  ``benchmarks/results.json`` (:func:`bench.device_key`); the book's benchmark page shows it.

The numbers measure the code path and the hardware, never the science: the weights are random
and the images are phantoms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from helpers.config import data_dir, output_dir
from helpers.bench.finetune_timing import BIOMEDCLIP_SIZE
from helpers.bench.report import read_results
from helpers.bench.timing import RESULTS, _machine, device_key
from helpers.book.runner import declared_parameters, notebook_path, read_notebook, toc_chapters
from helpers.data.iuxray import build_label_table, load_study_data
from helpers.data.labels import CHEXPERT_LABELS
from helpers.phantoms.rendering import generate, mask_of
from helpers.protocols.models import TinyConfig, build_tiny
from helpers.storage import atomic_write_csv, atomic_write_json

PNG_SIZE = 512
"""Side of the phantom PNGs in pixels (Open-I's PNGs are of this order; the chapters resize)."""
MIN_REGION_PX = 16
"""Connected mask regions smaller than this (in PNG pixels) get no box."""


def model_dir() -> Path:
    """Where ``setup`` writes the BiomedCLIP-size model: ``<IUXRAY_DATA_DIR>/models/biomedclip-size``."""
    return data_dir() / "models" / "biomedclip-size"


def annotations_path() -> Path:
    """Where ``setup`` writes the chapter-6 annotation CSV made from the phantoms' masks."""
    return data_dir() / "openi" / "phantom_annotations.csv"


def build_model(folder: Path, texts: Sequence[str]) -> Path:
    """The BiomedCLIP-size ``local-dir:`` folder (built once; kept when its weights exist)."""

    if (folder / "open_clip_model.safetensors").is_file():
        return folder
    return build_tiny(folder, list(texts), TinyConfig(**BIOMEDCLIP_SIZE))


def mask_boxes(bits: np.ndarray, labels: Sequence[str]) -> list[tuple[str, str]]:
    """(label, ``"x0,y0;x1,y1"``) for each connected region of each label's mask in a phantom
    bitmask (H, W) uint16; regions under :data:`MIN_REGION_PX` pixels are left out."""
    import cv2


    out = []
    for lab in labels:
        m = mask_of(bits, lab).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        for x, y, w, h, area in stats[1:n]:
            if area >= MIN_REGION_PX:
                out.append((lab, f"{x},{y};{x + w - 1},{y + h - 1}"))
    return out


def phantom_annotations(split: pd.DataFrame, mask_folder: Path, out: Path) -> int:
    """Write an annotation CSV (:mod:`helpers.data.annotations` format) with the boxes of every positive
    finding of the validation and test images of ``split`` (image_id, split, the 14 labels), from
    ``mask_folder/<image id>.png``; returns the number of boxes."""
    import cv2


    rows = []
    findings = [c for c in CHEXPERT_LABELS if c != "No Finding"]
    for _, r in split[split.split.isin(["val", "test"])].iterrows():
        positive = [c for c in findings if r[c] == 1]
        if not positive:
            continue
        p = mask_folder / f"{r.image_id}.png"
        bits = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if bits is None:
            raise FileNotFoundError(f"cannot read phantom mask {p}; run `python -m helpers.bench.at_scale setup`")
        rows += [(r.image_id, lab, "box", pts) for lab, pts in mask_boxes(bits, positive)]
    atomic_write_csv(out, pd.DataFrame(rows, columns=["image_id", "label", "shape", "points"]))
    return len(rows)


def setup(size: int = PNG_SIZE, workers: int | None = None) -> dict:
    """Build the model, render the PNGs and write the annotations (each re-used when complete)."""

    table = build_label_table().images
    texts = (table.findings.fillna("") + " " + table.impression.fillna("")).drop_duplicates().tolist()
    t0 = time.perf_counter()
    model = build_model(model_dir(), texts)
    t_model = time.perf_counter() - t0
    folder = data_dir() / "openi"
    generate(table, folder, style="target", size=size, workers=workers)
    t_png = time.perf_counter() - t0 - t_model
    n_boxes = phantom_annotations(load_study_data().split, folder / "masks", annotations_path())
    return {"model": f"local-dir:{model}", "images": str(folder / "images"), "n_images": len(table),
            "png_size": size, "annotations": str(annotations_path()), "n_boxes": n_boxes,
            "model_s": t_model, "render_s": t_png}


def _tree_rss(proc) -> int:
    """Bytes resident in ``proc`` and all its descendants (processes that vanish count 0)."""
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _gpu_used_mib() -> float | None:
    """GPU memory in use (MiB, summed over devices) from ``nvidia-smi``; None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return float(sum(float(x) for x in out.split()))
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def measure(cmd: Sequence[str], interval: float = 0.5) -> dict:
    """Run ``cmd``; its exit status, wall seconds, peak RSS of its process tree (MiB), where
    ``nvidia-smi`` exists the peak GPU memory in use (MiB; None otherwise), and the machine's
    1-minute load average when it started (others' work slows a shared machine) and the
    ``OMP_NUM_THREADS`` it inherits (None: unset)."""
    import psutil

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd))
    ps = psutil.Process(proc.pid)
    peak, gpu = 0, None
    while proc.poll() is None:
        peak = max(peak, _tree_rss(ps))
        g = _gpu_used_mib()
        gpu = g if gpu is None else max(gpu, g or 0)
        time.sleep(interval)
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "peak_rss_mib": peak / 2 ** 20,
            "peak_gpu_used_mib": gpu, "sample_interval_s": interval, "load_avg_1min_start": load,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def run(params: Sequence[tuple[str, str]], chapters: Sequence[str] | None = None, interval: float = 0.5) -> dict:
    """Every chapter (default: the book's) as its own runner process on the full profile with
    ``params`` (``-p`` pairs); stops at the first failure. Writes and returns the peaks; with
    ``chapters`` given, the earlier peaks of the other chapters are kept (a resumed run)."""

    path = output_dir("full") / "run_peaks.json"
    # a run of some chapters (``--chapters``) keeps the other chapters' earlier measurements
    peaks = json.loads(path.read_text()) if chapters and path.is_file() else {}
    for c in chapters or toc_chapters():
        # the benchmark page takes no model/limit parameters: pass each chapter only what it declares
        cmd = [sys.executable, "-m", "helpers.book.runner", c, "--profile", "full", *_declared(c, params)]
        print(f"[bench_full] {' '.join(cmd)}", flush=True)
        peaks[c] = measure(cmd, interval)
        peaks[c]["params"] = dict(_declared_pairs(c, params))
        atomic_write_json(path, peaks)
        if peaks[c]["rc"] != 0:
            raise RuntimeError(f"chapter {c} failed (exit status {peaks[c]['rc']}); see its .failed.ipynb; "
                               f"peaks so far in {path}")
    return peaks


def _declared_pairs(chapter: str, params: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:

    names = declared_parameters(read_notebook(notebook_path(chapter)))
    return [(k, v) for k, v in params if k in names]


def _declared(chapter: str, params: Sequence[tuple[str, str]]) -> list[str]:
    return [x for k, v in _declared_pairs(chapter, params) for x in ("-p", k, v)]


def _model_size(spec: str) -> dict:
    """Parameter count and sizes of a ``local-dir:`` model, from its files (no weights loaded)."""
    from safetensors import safe_open

    folder = Path(spec[len("local-dir:"):]) if spec.startswith("local-dir:") else None
    if folder is None or not (folder / "open_clip_model.safetensors").is_file():
        return {"spec": spec}
    with safe_open(str(folder / "open_clip_model.safetensors"), "pt") as f:
        n = sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    return {"spec": spec, "n_params": n, "architecture": cfg.get("tiny_config", cfg.get("model_cfg")),
            "weights": "random (built from configs by helpers.bench.at_scale setup)"
            if "tiny_config" in cfg else "as found in the folder"}


def full_run_record(times: dict, peaks: dict, chapters: Sequence[str]) -> dict:
    """The benchmark entry of one full-profile run: per chapter the runner's seconds
    (``run_times.json``), the measured wall time and peak memory (``run_peaks.json``), and the
    conditions (device, limit, model size and weights, images)."""
    import torch


    got = [c for c in chapters if c in times and c in peaks]
    params = {k: v for c in got for k, v in times[c]["params"].items()}
    gpu = torch.cuda.is_available()
    limit = params.get("limit", 0)
    png = data_dir() / "openi" / "images"
    try:
        from PIL import Image

        with Image.open(next(png.glob("*.png"))) as im:
            png_px = list(im.size)
    except (StopIteration, OSError):
        png_px = None
    return {
        "label": f"full-profile run at scale ({'GPU' if gpu else 'CPU'}{', reduced limit' if limit else ''})",
        "profile": "full",
        "conditions": {"device": device_key(torch.device("cuda" if gpu else "cpu")), "gpu": gpu,
                       "limit_per_split": limit, "params": params, "model": _model_size(str(params.get("model", ""))),
                       "images": {"what": "target-style phantoms named as Open-I's PNGs (helpers.bench.at_scale setup)",
                                  "n_png": sum(1 for _ in png.glob("*.png")), "png_px": png_px},
                       "omp_num_threads": sorted({str(peaks[c].get("omp_num_threads")) for c in got}),
                       "cpu_count": os.cpu_count(),
                       "memory": "peak RSS of the runner and all its children, sampled; "
                                 + ("GPU: device memory in use (nvidia-smi)" if gpu else "no GPU")},
        "chapters": {c: {"seconds": times[c]["seconds"], "wall_s": peaks[c]["wall_s"],
                         "peak_rss_mib": peaks[c]["peak_rss_mib"], "peak_gpu_used_mib": peaks[c]["peak_gpu_used_mib"],
                         "load_avg_1min_start": peaks[c].get("load_avg_1min_start"), "date": times[c]["date"]}
                     for c in got},
        "chapters_s": {c: times[c]["seconds"] for c in got},
        "total_s": sum(times[c]["seconds"] for c in got),
        "peak_rss_mib": max((peaks[c]["peak_rss_mib"] for c in got), default=None),
        "complete": len(got) == len(chapters),
    }


def record(out: Path | None = None) -> dict:
    """Store :func:`full_run_record` of ``outputs/full`` as this device's ``full_profile_run`` in
    the benchmark file (default ``benchmarks/results.json``); other entries are kept."""
    import torch


    out = Path(out) if out is not None else RESULTS
    files = [output_dir("full") / n for n in ("run_times.json", "run_peaks.json")]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing: run `python -m helpers.bench.at_scale run` first")
    times, peaks = (json.loads(f.read_text()) for f in files)
    rec = full_run_record(times, peaks, toc_chapters())
    data = read_results(out)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    key = device_key(dev)
    devices = data.get("devices", {})
    entry = devices.setdefault(key, {"machine": _machine(dev, smoke=False)})
    entry["full_profile_run"] = rec
    atomic_write_json(out, {"format": 2, "latest": data.get("latest", key), "devices": devices})
    return rec


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m helpers.bench.at_scale", description=__doc__.split("\n")[0].replace("``", ""))
    ap.add_argument("step", choices=("setup", "run", "record", "all"),
                    help="setup: model, PNGs, annotations; run: every chapter, measured; record: into the "
                         "benchmark file; all: the three in order")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="chapter parameter for `run` (as helpers.book.runner; each chapter gets those it declares); "
                         "model and annotations default to what `setup` made")
    ap.add_argument("--chapters", nargs="*", default=None, help="chapters to run (default: the book's)")
    ap.add_argument("--size", type=int, default=PNG_SIZE, help="setup: side of the phantom PNGs in pixels")
    ap.add_argument("--workers", type=int, default=None, help="setup: rendering processes (default: all cores)")
    ap.add_argument("--interval", type=float, default=0.5, help="run: seconds between memory samples")
    ap.add_argument("--out", type=Path, default=None, help="record: benchmark file (default benchmarks/results.json)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    params = [tuple(x) for x in a.parameter]
    names = {k for k, _ in params}
    params += [(k, v) for k, v in (("model", f"local-dir:{model_dir()}"), ("annotations", str(annotations_path())))
               if k not in names]
    try:
        if a.step in ("setup", "all"):
            print(json.dumps(setup(a.size, a.workers), indent=1))
        if a.step in ("run", "all"):
            run(params, a.chapters, a.interval)
        if a.step in ("record", "all"):
            rec = record(a.out)
            print(json.dumps({k: rec[k] for k in ("label", "chapters", "total_s", "complete")}, indent=1))
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"python -m helpers.bench.at_scale: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
