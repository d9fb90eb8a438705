"""Check that a profile can run before a long run: ``python -m helpers.bench.preflight``.

Examples::

    python -m helpers.bench.preflight --profile full                  # before the real study
    python -m helpers.bench.preflight --profile full --image-dir /data/NLMCXR_png --model local-dir:/models/biomedclip
    python -m helpers.bench.preflight                                 # demo profile, seconds

One screen, one line per check:

* **images**: the study's image ids (one selected frontal per report; ``--limit`` as the
  chapters' ``limit``) against the image folder: found, readable (every header opened, a
  sample fully decoded), missing (count and first names);
* **model**: the spec loads (open_clip); parameter count, preprocessing size, mean and std;
* **GPU**: device name and free / total memory (``torch.cuda``), or that the run will use
  the CPU;
* **disk**: free space where the caches go (``IUXRAY_DATA_DIR``, default ``<repo>/data``)
  against an estimate from the image count: pixel cache N*S*S bytes, image embeddings,
  fine-tuning checkpoints (weights + Adam state) of chapter 4's 2 x n_seeds runs, phantoms in ``demo``;
* **time**: expected seconds per chapter, from this machine's ``run_times.json`` for the
  profile or from ``benchmarks/results.json``; "unknown" when neither has them.

Then it prints the exact command to run next. The exit status is 0 when every check
passes, 1 with one message per problem (a model spec that cannot load, an image folder with
no matching ids, missing or unreadable images, not enough disk), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from helpers.config import PROFILES, REPO_ROOT, data_dir, get_profile, output_dir
from helpers.book.runner import declared_parameters, notebook_path, read_notebook, toc_chapters
from helpers.book.study import subsample
from helpers.data.iuxray import load_study_data
from helpers.protocols.models import load_model

BENCHMARKS = REPO_ROOT / "benchmarks" / "results.json"
GIB = 1024 ** 3
SHOW = 5
"""How many file names a message lists before "and N more"."""
PHANTOM_BYTES = 40 * 1024
"""Disk per demo phantom (image + mask PNGs at 224 px), measured on the demo cache."""
CHECKPOINT_BYTES_PER_PARAM = 16
"""Fine-tuning keeps best.pt (fp32 weights) and last.pt (weights + two Adam moments)."""


@dataclass
class Check:
    """One line of the report; ``problems`` holds one clear message per missing thing."""

    name: str
    summary: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _names(items: Sequence[str]) -> str:
    head = ", ".join(items[:SHOW])
    return head + (f" and {len(items) - SHOW} more" if len(items) > SHOW else "")


def expected_image_ids(limit: int = 0) -> list[str]:
    """Image ids the chapters read: the split's selected frontals (at most ``limit`` per split)."""

    return list(subsample(load_study_data().split, limit or None).image_id)


def check_images(ids: Sequence[str], folder: Path, verify: int = 32) -> Check:
    """Open-I PNGs ``folder/<id>.png``: found, readable (headers; ``verify`` decoded), missing."""
    c = Check("images")
    if not folder.is_dir():
        c.problems.append(f"image folder not found: {folder}; fetch the Open-I PNGs with "
                          f"`python -m helpers.data.download` or pass --image-dir <folder of PNGs>")
        return c
    found = [i for i in ids if (folder / f"{i}.png").is_file()]
    missing = [i for i in ids if i not in set(found)]
    if not found:
        some = sorted(p.name for p in folder.glob("*.png"))[:SHOW]
        c.problems.append(
            f"no image in {folder} matches the study's ids ({len(ids)} expected, e.g. "
            f"{ids[0]}.png; the folder holds {_count_png(folder)} PNGs"
            f"{', e.g. ' + ', '.join(some) if some else ''}): point --image-dir at the "
            f"unpacked NLMCXR_png folder")
        return c
    bad = _unreadable(folder, found, verify)
    if missing:
        c.problems.append(f"{len(missing)} of {len(ids)} study images missing from {folder}: "
                          f"{_names([m + '.png' for m in missing])}; fetch them or run the "
                          f"chapters with -p on_error skip")
    if bad:
        c.problems.append(f"{len(bad)} unreadable image(s) in {folder}: {_names(bad)}; "
                          f"re-download them")
    n_dec = len(found) if verify <= 0 else min(verify, len(found))
    c.summary = (f"{len(ids)} expected in {folder}: {len(found)} found, "
                 f"{len(found) - len(bad)} readable (all headers, {n_dec} decoded), "
                 f"{len(missing)} missing")
    return c


def _count_png(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.png"))


def _unreadable(folder: Path, ids: Sequence[str], verify: int) -> list[str]:
    """Names of files whose header does not open, or (for a sample) whose pixels do not decode."""
    import numpy as np
    from PIL import Image

    order = np.random.default_rng(0).permutation(len(ids))
    decode = set(order if verify <= 0 else order[:verify])
    bad = []
    for k, i in enumerate(ids):
        p = folder / f"{i}.png"
        try:
            with Image.open(p) as im:
                if k in decode:
                    im.load()
        except Exception:  # noqa: BLE001  (any decoder error means: unreadable)
            bad.append(p.name)
    return bad


def check_phantoms(ids: Sequence[str]) -> Check:
    """Demo profile: phantoms are rendered on first use; count those already on disk."""
    folder = data_dir() / "phantoms" / "target-224"
    have = sum((folder / "images" / f"{i}.png").is_file() for i in ids) if folder.is_dir() else 0
    return Check("images", f"{len(ids)} phantoms needed, {have} already rendered in {folder} "
                           f"(the rest are rendered on first use)")


def check_model(spec: str) -> tuple[Check, object | None]:
    """Load ``spec`` with open_clip on the CPU; report size and preprocessing."""

    c = Check("model")
    try:
        _, _, _, info = load_model(spec, device="cpu")
    except Exception as e:  # noqa: BLE001  (any failure means: this spec cannot load)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        c.problems.append(f"model spec {spec!r} cannot load: {msg}; pass --model with a "
                          f"loadable spec (biomedclip, hf-hub:ORG/NAME, local-dir:PATH, tiny)")
        return c, None
    mean = ", ".join(f"{x:.3f}" for x in info.mean)
    std = ", ".join(f"{x:.3f}" for x in info.std)
    c.summary = (f"{spec} loads: {info.n_params / 1e6:.1f} M parameters, images "
                 f"{info.image_size}x{info.image_size}, mean ({mean}), std ({std}), "
                 f"embed dim {info.embed_dim}")
    return c, info


def check_gpu(profile: str) -> Check:
    """The CUDA device and its memory, or a warning that the run uses the CPU."""
    import torch

    c = Check("GPU")
    if not torch.cuda.is_available():
        c.summary = "none: the chapters run on the CPU"
        if profile == "full":
            c.warnings.append("no GPU: the full profile on a CPU takes hours (see the time line)")
        return c
    free, total = torch.cuda.mem_get_info(0)
    c.summary = (f"{torch.cuda.get_device_name(0)}: {free / GIB:.1f} GiB free of "
                 f"{total / GIB:.1f} GiB ({torch.cuda.device_count()} device(s))")
    return c


def disk_needed(n_images: int, image_size: int, embed_dim: int, n_params: int,
                profile: str, finetune_runs: int = 1) -> dict[str, int]:
    """Bytes the caches of one run need, by kind (see the module docstring). Chapter 4 keeps the
    checkpoints of ``finetune_runs`` runs (``2 * n_seeds``: real and permuted labels)."""
    one_run = n_params * CHECKPOINT_BYTES_PER_PARAM
    runs = f" ({finetune_runs} runs)" if finetune_runs != 1 else ""
    need = {"pixel cache": n_images * image_size * image_size,
            "embeddings": 2 * n_images * embed_dim * 4,
            f"fine-tuning checkpoints{runs}": finetune_runs * one_run}
    if profile == "demo":
        need["phantoms"] = n_images * PHANTOM_BYTES
    # one file at a time is written beside its final path
    need["temporary copy (atomic writes)"] = max(one_run, *(v for k, v in need.items() if "fine-tuning" not in k))
    return need


def default_n_seeds() -> int:
    """Chapter 4's default number of training seeds (read from its parameters cell)."""

    return int(declared_parameters(read_notebook(notebook_path("04_fine_tune")))["n_seeds"].default)


def check_disk(need: dict[str, int], folder: Path) -> Check:
    """Free space on the file system of ``folder`` (its nearest existing parent)."""
    c = Check("disk")
    p = folder
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free
    total = sum(need.values())
    parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in need.items())
    c.summary = f"needs ~{total / GIB:.2f} GiB ({parts}), {free / GIB:.1f} GiB free at {folder}"
    if free < total:
        c.problems.append(f"not enough disk at {folder}: the caches need ~{total / GIB:.2f} GiB, "
                          f"{free / GIB:.2f} GiB are free; free some space or set IUXRAY_DATA_DIR "
                          f"to a larger disk")
    return c


def _time_sources(profile: str, results: Path) -> list[tuple[dict[str, float], str]]:
    """Per-chapter seconds from each source, most specific first."""
    out = []
    f = output_dir(profile) / "run_times.json"
    if f.is_file():
        t = json.loads(f.read_text())
        limited = sorted({str(v.get("params", {}).get("limit")) for v in t.values()
                          if v.get("params", {}).get("limit")})
        note = f", with -p limit {'/'.join(limited)}" if limited else ""
        out.append(({c: v["seconds"] for c, v in t.items()}, f"{f} (earlier runs here{note})"))
    if results.is_file():
        r = json.loads(results.read_text())
        devices = r.get("devices") or {r.get("machine", {}).get("device", "?"): r}  # per device, or older
        for dev, entry in devices.items():
            for key, v in entry.items():
                if isinstance(v, dict) and "chapters_s" in v and v.get("profile", "demo") == profile:
                    limit = v.get("conditions", {}).get("limit_per_split")
                    what = v.get("label", key) + (f"; -p limit {limit}" if limit else "")
                    out.append((dict(v["chapters_s"]), f"{results} [{what}] (measured on {dev})"))
    return out


def expected_times(profile: str, results: Path = BENCHMARKS) -> dict[str, tuple[float, str] | None]:
    """Per book chapter: (seconds, source) from the most specific source that has it, or None.

    Sources: this machine's ``run_times.json`` for the profile, then the benchmark file's
    entries for the profile (``chapters_s``; an entry without ``profile`` is the demo book).
    """

    sources = _time_sources(profile, results)
    out: dict[str, tuple[float, str] | None] = {}
    for c in toc_chapters():
        out[c] = next(((t[c], src) for t, src in sources if c in t), None)
    return out


def time_check(profile: str, results: Path | None = None) -> Check:
    """Expected time per chapter, "unknown" where no source has one (``results``: the benchmark
    file, default ``benchmarks/results.json``)."""
    times = expected_times(profile, results or BENCHMARKS)
    known = {c: v for c, v in times.items() if v is not None}
    if not known:
        return Check("time", "unknown: no run_times.json for this profile and no benchmark entry")
    per = ", ".join(f"{c} {v[0]:.0f}s" if v else f"{c} unknown" for c, v in times.items())
    total = sum(v[0] for v in known.values())
    srcs = "; ".join(dict.fromkeys(v[1] for v in known.values()))
    n_unknown = len(times) - len(known)
    more = f" + {n_unknown} chapter(s) unknown" if n_unknown else ""
    return Check("time", f"~{total / 60:.1f} min{more} ({per}); from {srcs}")


def next_command(profile: str, model: str, image_dir: Path, limit: int, n_seeds: int | None = None) -> str:
    """The exact command that runs the profile as checked."""
    py = ".venv/bin/python" if (REPO_ROOT / ".venv" / "bin" / "python").exists() else "python"
    cmd = [py, "-m", "helpers.book.runner", "--profile", profile]
    if model != get_profile(profile).model:
        cmd += ["-p", "model", model]
    if limit:
        cmd += ["-p", "limit", str(limit)]
    if n_seeds is not None and n_seeds != default_n_seeds():
        cmd += ["-p", "n_seeds", str(n_seeds)]
    default = data_dir() / "openi" / "images"
    if profile == "full" and image_dir.resolve() != default.resolve():
        cmd += ["-p", "image_dir", str(image_dir.resolve())]  # chapters 2-6 declare it
    return " ".join(shlex.quote(x) for x in cmd)


def run_checks(profile: str, model: str, image_dir: Path, limit: int, verify: int,
               n_seeds: int | None = None) -> list[Check]:
    """Every check, in screen order (``n_seeds``: chapter 4's, default its own)."""
    ids = expected_image_ids(limit)
    images = check_images(ids, image_dir, verify) if profile == "full" else check_phantoms(ids)
    model_check, info = check_model(model)
    checks = [images, model_check, check_gpu(profile)]
    if info is not None:
        runs = 2 * (n_seeds or default_n_seeds())
        need = disk_needed(len(ids), info.image_size, info.embed_dim, info.n_params, profile, runs)
        checks.append(check_disk(need, data_dir()))
    else:
        checks.append(Check("disk", "not estimated (the model did not load)"))
    checks.append(time_check(profile))
    return checks


def report(checks: Sequence[Check], profile: str, command: str) -> str:
    """The screen: one line per check, then the problems or the next command."""
    lines = [f"Preflight, profile {profile}: {get_profile(profile).description}"]
    for c in checks:
        tag = "FAIL" if not c.ok else ("warn" if c.warnings else "ok")
        lines.append(f"[{tag:4}] {c.name:6} {c.summary}".rstrip())
        lines += [f"       ! {w}" for w in c.warnings]
    problems = [p for c in checks for p in c.problems]
    if problems:
        lines.append(f"Not ready: {len(problems)} problem(s).")
        lines += [f"  - {p}" for p in problems]
    else:
        lines.append("Ready. Next:")
        lines.append(f"  {command}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m helpers.bench.preflight", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Check images, model, GPU, disk and expected time before running a profile; "
                    "print the command to run next. Exit 0 when ready, 1 with one message per "
                    "problem, 2 for bad arguments. Caches go to IUXRAY_DATA_DIR (default "
                    "<repo>/data).")
    ap.add_argument("--profile", default="demo", choices=sorted(PROFILES),
                    help="which inputs to check: demo (phantoms, tiny model) or full (Open-I "
                         "PNGs, BiomedCLIP)")
    ap.add_argument("--model", default="",
                    help="open_clip model spec to load (biomedclip, hf-hub:ORG/NAME, "
                         "local-dir:PATH, tiny); empty means the profile's own (tiny for demo, "
                         "biomedclip for full)")
    ap.add_argument("--image-dir", type=Path, default=None,
                    help="full profile: folder of Open-I PNGs named <image id>.png; default "
                         "<IUXRAY_DATA_DIR>/openi/images, where the chapters read them")
    ap.add_argument("--limit", type=int, default=0,
                    help="check only the images a run with -p limit N reads (N per split); "
                         "0 means every image of the study")
    ap.add_argument("--n-seeds", type=int, default=None,
                    help="chapter 4's -p n_seeds for the run (it keeps 2 x n_seeds fine-tuning "
                         "checkpoints: real and permuted labels); default: chapter 4's own")
    ap.add_argument("--verify", type=int, default=32,
                    help="how many found images to decode fully (every header is opened); "
                         "0 decodes all")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.limit < 0 or args.verify < 0 or (args.n_seeds is not None and args.n_seeds < 1):
        print("error: --limit and --verify must be >= 0, --n-seeds >= 1", file=sys.stderr)
        return 2
    model = args.model or get_profile(args.profile).model
    image_dir = args.image_dir or data_dir() / "openi" / "images"
    checks = run_checks(args.profile, model, image_dir, args.limit, args.verify, args.n_seeds)
    print(report(checks, args.profile, next_command(args.profile, model, image_dir, args.limit, args.n_seeds)))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
