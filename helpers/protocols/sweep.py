"""The fine-tuning budget, chosen in the open: a successive-halving sweep on validation only.

``python -m helpers.protocols.sweep`` trains every configuration of :data:`GRID` (objective x learning
rate) on the training split with the original study's schedule length of :data:`MAX_EPOCHS` epochs
(cosine schedule, early stopping with :data:`PATIENCE` < the epoch count), but not to the end:
after the first rung of :data:`RUNGS` epochs every configuration is ranked by its best
validation macro AUROC so far, the best ``1 / ETA`` continue to the next rung (resumed from
their checkpoints, the schedule unchanged), and so on. Test is never looked at.

The record (every configuration's validation curve, the rung it reached, the selection, the
command, the code and data hashes, the measured time) is written atomically to
``sweeps/finetune_<profile>.json`` and committed, like the pretrained model's log; chapter 4
reads its defaults from it (:func:`selected_defaults`) and plots it.

A configuration's score at a rung is the best validation AUROC over the epochs it has run;
one that stopped early keeps its score and competes at later rungs without training further.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from helpers.book.progress import bar as tqdm
from helpers.book.study import load_study
from helpers.config import REPO_ROOT, data_dir, get_profile
from helpers.protocols.finetune import FinetuneConfig, finetune
from helpers.protocols.probe import fit_probe
from helpers.storage import atomic_write_json, sha256_bytes

GRID: dict[str, tuple] = {"objective": ("contrastive", "bce", "lp-ft"),
                          "lr": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)}
MAX_EPOCHS = 20
PATIENCE = 4
RUNGS = (2, 6, 20)
ETA = 3
SWEEP_DIR = REPO_ROOT / "sweeps"
CODE_FILES = ("finetune.py", "training.py", "sweep.py", "probe.py")


def sweep_path(profile: str) -> Path:
    """The committed record of ``profile``'s sweep."""
    return SWEEP_DIR / f"finetune_{profile}.json"


def configurations(grid: dict[str, Sequence] = GRID) -> list[dict[str, Any]]:
    """Every combination of the grid's values, as dicts (objective-major order)."""
    out = [{}]
    for name, values in grid.items():
        out = [{**c, name: v} for c in out for v in values]
    return out


def survivors(scores: dict[int, float], eta: int = ETA) -> list[int]:
    """The ``ceil(n / eta)`` best configurations by score (ties: the lower index), best first."""
    keep = max(1, math.ceil(len(scores) / eta))
    return sorted(scores, key=lambda i: (-scores[i], i))[:keep]


def code_hash() -> str:
    """Hash of the training code the sweep ran (helpers' fine-tuning modules)."""

    here = Path(__file__).parent
    return sha256_bytes(b"".join((here / f).read_bytes() for f in CODE_FILES), 12)


def run_sweep(profile: str = "demo", grid: dict[str, Sequence] = GRID, rungs: Sequence[int] = RUNGS,
              eta: int = ETA, patience: int = PATIENCE, seed: int = 0,
              max_steps_per_epoch: int | None = None, limit: int | None = None,
              max_epochs: int = MAX_EPOCHS, configs: Sequence[dict] | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Run the successive-halving sweep (module docstring) and return its record.

    Every configuration trains on the schedule of ``max_epochs`` epochs (its cosine and its run
    key), stopped at the rungs. ``configs`` replaces the grid's combinations (a slice of a
    sweep, for its reproduction test); ``max_steps_per_epoch`` and ``limit`` shrink it for
    tests, and the record says so (``quick``).
    """


    if list(rungs) != sorted(rungs) or rungs[-1] > max_epochs or patience >= max_epochs:
        raise ValueError(f"rungs must increase up to max_epochs ({max_epochs}) and patience "
                         f"({patience}) stay below it, got rungs {list(rungs)}")
    t0 = time.perf_counter()
    study = load_study(profile, limit=limit)
    train, val = study.rows("train"), study.rows("val")
    y = study.y()
    defaults = get_profile(profile).finetune
    probe = None
    confs = [dict(c) for c in configs] if configs is not None else configurations(grid)
    if any(c["objective"] == "lp-ft" for c in confs):
        emb = study.image_embeddings()
        probe = fit_probe(emb[train], y[train], emb[val], y[val], class_weight="balanced")
    root = data_dir() / "sweeps" / f"finetune-{profile}"
    done: dict[int, list] = {i: [] for i in range(len(confs))}
    stopped: dict[int, bool] = {i: False for i in range(len(confs))}
    reached: dict[int, int] = {i: 0 for i in range(len(confs))}
    alive = list(range(len(confs)))
    for r, budget in enumerate(rungs):
        bar = tqdm(alive, desc=f"rung {r + 1}/{len(rungs)}: {budget} epochs", disable=not progress)
        for i in bar:
            c = confs[i]
            cfg = FinetuneConfig(objective=c["objective"], lr=float(c["lr"]), epochs=max_epochs,
                                 batch_size=defaults.get("batch_size", 32), patience=patience,
                                 seed=seed, max_steps_per_epoch=max_steps_per_epoch)
            def run_epochs(epochs: int):
                return finetune(study.model, study.tokenizer, study.pixels, y, train, val,
                                study.labels, study.info.mean, study.info.std,
                                study.info.weights_sha256, cfg, root, device=study.device,
                                progress=False, stop_after_epochs=epochs,
                                probe=probe if c["objective"] == "lp-ft" else None)

            if not done[i]:  # a checkpoint from an interrupted sweep: resume from it
                res = run_epochs(0)
                done[i], stopped[i] = res.history, res.stopped_early
            todo = budget - len(done[i])
            if todo > 0 and not stopped[i]:
                res = run_epochs(todo)
                done[i], stopped[i] = res.history, res.stopped_early
            reached[i] = r + 1
        scores = {i: max((h["val_auroc"] for h in done[i]), default=-1.0) for i in alive}
        if r + 1 < len(rungs):
            alive = survivors(scores, eta)
    return _record(profile, study, confs, done, stopped, reached, alive, grid, rungs, eta,
                   max_epochs, patience, seed, limit, max_steps_per_epoch,
                   configs is not None, time.perf_counter() - t0)


def _record(profile, study, confs, done, stopped, reached, alive, grid, rungs, eta, max_epochs,
            patience, seed, limit, max_steps_per_epoch, sliced, wall_s) -> dict[str, Any]:
    """The sweep's record (module docstring): every curve, the selection, the provenance."""
    final = {i: max((h["val_auroc"] for h in done[i]), default=-1.0) for i in alive}
    best = sorted(final, key=lambda i: (-final[i], i))[0]
    best_at = best_epoch(done[best])
    return {
        "profile": profile, "model_id": study.info.id, "data_hash": study.split_hash,
        "pixel_key": study.pixels.key, "code_sha256": code_hash(),
        "command": "python -m helpers.protocols.sweep " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in
            (("profile", profile), ("limit", limit), ("max_steps_per_epoch", max_steps_per_epoch))
            if v is not None),
        "grid": {k: list(v) for k, v in grid.items()}, "rungs": list(rungs), "eta": eta,
        "max_epochs": max_epochs, "patience": patience, "seed": seed,
        "selection": "best validation macro AUROC over the epochs run (test never read)",
        "configurations": [{**confs[i], "rung_reached": reached[i], "stopped_early": stopped[i],
                            "best_val_auroc": max((h["val_auroc"] for h in done[i]), default=None),
                            "curve": [{k: h[k] for k in ("epoch", "train_loss", "val_loss",
                                                         "val_auroc", "epoch_s")}
                                      for h in done[i]]} for i in range(len(confs))],
        "selected": {**confs[best], "epochs": max_epochs, "patience": patience,
                     "best_epoch": best_at, "best_val_auroc": final[best]},
        "quick": bool(limit or max_steps_per_epoch or sliced),
        "wall_s": round(wall_s, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def write_record(record: dict[str, Any], path: str | Path | None = None) -> Path:
    """Write a sweep record atomically (default: the profile's committed file)."""

    return atomic_write_json(Path(path) if path else sweep_path(record["profile"]), record)


def read_record(profile: str = "demo", path: str | Path | None = None) -> dict[str, Any] | None:
    """The sweep record of ``profile``, or ``None`` when there is none."""
    p = Path(path) if path else sweep_path(profile)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e}); restore it with git checkout or re-run "
                         f"python -m helpers.protocols.sweep") from e


def best_config(record: dict[str, Any] | None, objectives: Sequence[str]) -> dict[str, Any] | None:
    """The configuration of one of ``objectives`` that did best on validation in a sweep record:
    the furthest rung first (it was compared with more training), then the best validation
    AUROC; ``None`` when the record has none. Returns the record's configuration dict."""
    if not record:
        return None
    confs = [c for c in record["configurations"]
             if c["objective"] in objectives and c.get("best_val_auroc") is not None]
    if not confs:
        return None
    return max(confs, key=lambda c: (c["rung_reached"], c["best_val_auroc"]))


def best_lr(record: dict[str, Any] | None, objective: str) -> float | None:
    """The learning rate of :func:`best_config` for one objective, or ``None``."""
    c = best_config(record, (objective,))
    return None if c is None else float(c["lr"])


def best_epoch(curve: Sequence[dict[str, Any]]) -> int:
    """The epoch (1-based) of a validation curve's best AUROC (a configuration's ``curve``)."""
    return int(max(curve, key=lambda h: h["val_auroc"])["epoch"])


def selected_defaults(profile: str, fallback: dict[str, Any]) -> dict[str, Any]:
    """Chapter 4's fine-tuning defaults: the sweep's selection (objective, lr, epochs,
    patience, and ``stop_epoch``: its best epoch) over ``fallback`` (the profile's own, which
    runs the whole schedule), when a full sweep record exists."""
    rec = read_record(profile)
    if rec is None or rec.get("quick"):
        return {"stop_epoch": 0, **fallback}
    sel = rec["selected"]
    return {**fallback, **{k: sel[k] for k in ("objective", "lr", "epochs", "patience")},
            "stop_epoch": int(sel["best_epoch"])}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--limit", type=int, default=None, help="images per split (a quick sweep)")
    ap.add_argument("--max-steps-per-epoch", type=int, default=None)
    ap.add_argument("--out", default=None, help="record path (default: sweeps/finetune_<profile>.json)")
    a = ap.parse_args(argv)
    rec = run_sweep(a.profile, limit=a.limit, max_steps_per_epoch=a.max_steps_per_epoch)
    path = write_record(rec, a.out)
    s = rec["selected"]
    print(f"selected {s['objective']} lr {s['lr']:g} (best validation AUROC {s['best_val_auroc']:.3f} "
          f"at epoch {s['best_epoch']}); {rec['wall_s']:.0f} s; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
