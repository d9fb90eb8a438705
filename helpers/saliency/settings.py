"""Chapter 6's settings, built once for both of its pages (``06_grad_cam``, ``06b_sanity``).

A *setting* is a model whose label scores are explained: zero-shot with chapter 2's selected
classifier (``zs``), zero-shot with the original study's positive prompt only (``zs+``), the
linear probe (``lp``), the fine-tuned model (``ft``) and, in ``demo``, the positive control
(``control``). The model chapter 4 fine-tuned on permuted labels (``ft-permuted``) is explained
like a setting but is the data-randomisation control, not a setting.

* :func:`build` loads every setting (the positive control trained once and cached by
  :mod:`helpers.saliency.positive_control`) with the pairs each one is scored on, the pairs that
  tune the segmentation thresholds, and the location prior.
* :meth:`CamSettings.explain` explains one setting on some pairs; in ``full`` the probe explains
  an annotated training image with a probe that never saw its report
  (:func:`explain.holdout_probes`), and the folds are put back in pair order here.
* :func:`reference_summaries` scores the maps whose scores are known (oracle, uniform, random,
  centre, random grid, the location prior); :func:`explain_every_setting` runs every method on
  every setting (and Grad-CAM at every layer position); :func:`summary_table` makes either one a
  display table.
* :func:`save_hits` / :func:`load_hits` hand the per-pair Grad-CAM hits from the first page to
  the second (checked against its pairs), so the sanity checks do not explain the trained
  models again.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from torch import nn

from helpers.analysis.estimate import Estimate
from helpers.analysis.metrics import bootstrap_stat
from helpers.book.artefacts import read_result, write_result
from helpers.book.study import LocPairs, Study, localization_pairs
from helpers.protocols import repeats
from helpers.protocols.probe import load_probe
from helpers.protocols.zeroshot import single_prompt_texts
from helpers.saliency import regions
from helpers.saliency.attribution import NAMES as METHOD_NAMES
from helpers.saliency.attribution import ONE_PASS, default_layer, layer_positions, native_grid
from helpers.saliency.explain import (
    EmbeddingScorer,
    Explained,
    explain_pairs,
    finetuned_head,
    holdout_probes,
    score_maps,
    selected_classifier,
    summarise_setting,
    zero_shot_classifier,
    zero_shot_head,
)
from helpers.saliency.positive_control import Control, ControlConfig, positive_control
from helpers.storage import atomic_write_bytes

ALL_SPLITS = ("train", "val", "test")
SETTING_NAMES = {"zs+": "zero-shot, positive prompt only", "lp": "linear probe",
                 "ft": "fine-tuned", "control": "positive control",
                 "ft-permuted": "fine-tuned on permuted labels"}
"""Display names of the settings; zero-shot (``zs``) is named after its classifier."""
CASCADE_SETTINGS = ("zs", "lp", "ft", "control")
"""The settings whose maps are followed through the cascade and across layers."""
TRAIN_PAIRS_FOR_PRIOR = 2000
"""At most this many training pairs average into the location prior."""


@dataclass
class CamSettings:
    """Every explained model of chapter 6, with the pairs it is scored on.

    ``scorers``: the settings (key -> differentiable scorer image -> label scores);
    ``controls``: explained like a setting but not one (``ft-permuted``); ``pixels``: an image
    cache other than the study's for a key (the positive control sees marked images);
    ``scored``: the pairs each key is scored on (``demo``: the test pairs; ``full``: every
    annotated image its model did not train on); ``tune``: validation pairs for thresholds;
    ``prior``: the location prior per label (S, S), ``demo`` only; ``layers``: each key's CAM
    target, the last layer whose patch tokens reach its score
    (:func:`attribution.default_layer`: the last block's input for a CLS-pooled tower, the
    final norm for the positive control, which pools its patches); ``grid``: the tower's
    patch grid side.
    """

    study: Study
    scorers: dict[str, nn.Module]
    controls: dict[str, nn.Module]
    names: dict[str, str]
    pixels: dict[str, object]
    scored: dict[str, LocPairs]
    tune: LocPairs
    prior: dict[str, np.ndarray] | None
    control: Control | None
    zs_name: str
    layers: dict[str, int]
    grid: int
    k_folds: int = 5
    probe: object = field(default=None, repr=False)

    @property
    def base(self) -> LocPairs:
        """The pairs every reference map is scored on (zero-shot's)."""
        return self.scored["zs"]

    @property
    def has_masks(self) -> bool:
        """Whether the regions are the phantoms' masks (``demo``), with a prior and a control."""
        return self.prior is not None

    def keys(self) -> list[str]:
        """Settings, then controls, in the order tables show them."""
        return [*self.scorers, *self.controls]

    def cascade_keys(self) -> list[str]:
        return [k for k in CASCADE_SETTINGS if k in self.scorers]

    def explain(self, key: str, pairs: LocPairs, methods: Sequence[str] = ONE_PASS,
                layers: bool = False, keep: Sequence[int] = (), small: bool = False,
                scorer: nn.Module | None = None) -> Explained:
        """Maps of setting ``key`` (or of ``scorer``, a randomised copy of it) on ``pairs``,
        scored. Without masks (``full``) the trained probe explains each pair with a probe
        that never saw the pair's report."""
        kw = dict(layer=self.layers[key], progress=False, pixels=self.pixels.get(key))
        if scorer is not None or key != "lp" or self.has_masks:
            model = scorer if scorer is not None else {**self.scorers, **self.controls}[key]
            return explain_pairs(model, self.study, pairs, methods, layers, keep, small, **kw)
        visual = self.study.model.visual
        parts = [(idx, explain_pairs(EmbeddingScorer(visual, p.torch_logits), self.study,
                                     pairs.subset(idx), methods, layers, small=small, **kw))
                 for idx, p in holdout_probes(self.study, self.probe, pairs, self.k_folds)]
        return _in_pair_order(parts)


def _in_pair_order(parts: list[tuple[np.ndarray, Explained]]) -> Explained:
    """One :class:`Explained` from per-fold parts whose pair indices together cover every pair."""
    if not parts:
        return Explained({})
    order = np.argsort(np.concatenate([idx for idx, _ in parts]))
    stats = {m: {s: np.concatenate([e.stats[m][s] for _, e in parts])[order]
                 for s in parts[0][1].stats[m]} for m in parts[0][1].stats}
    small = {m: np.concatenate([e.small[m] for _, e in parts])[order]
             for m in parts[0][1].small}
    return Explained(stats, small=small)


def scored_splits(has_masks: bool) -> dict[str, tuple[str, ...]]:
    """The splits each key is scored on: ``demo``, the test split for all; ``full``, every
    annotated image its model did not train on (zero-shot and the held-out probes: every
    split; the fine-tuned models: validation and test)."""
    if has_masks:
        return {k: ("test",) for k in ("zs", "zs+", "lp", "ft", "control", "ft-permuted")}
    return {"zs": ALL_SPLITS, "zs+": ALL_SPLITS, "lp": ALL_SPLITS, "ft": ("val", "test"),
            "ft-permuted": ("val", "test")}


def build(study: Study, max_pairs: int = 200, annotations: str = "",
          control_config: ControlConfig | None = None, k_folds: int = 5) -> CamSettings:
    """Load every setting of chapter 6 and the pairs it is scored on.

    ``max_pairs``: at most this many pairs per split combination (0: all); ``annotations``: the
    ``full`` profile's annotation CSV (empty: the shipped example); ``control_config``: the
    positive control's training (``demo`` only; cached by its key, so the second page loads
    what the first trained)."""
    has_masks = "mask_path" in study.table
    splits = scored_splits(has_masks)
    cache: dict[tuple[str, ...], LocPairs] = {}

    def pairs_of(s: tuple[str, ...]) -> LocPairs:
        if s not in cache:
            cache[s] = localization_pairs(study, s, max_pairs or None, annotations or None)
        return cache[s]

    zs_name = selected_classifier(study)
    pos, neg = zero_shot_classifier(study, zs_name)
    bare = study.text_embeddings(single_prompt_texts("bare", study.labels))
    probe = load_probe(study.artefacts.probe())
    ft = repeats.finetuned_scorer(study)
    visual = study.model.visual
    scorers: dict[str, nn.Module] = {
        "zs": EmbeddingScorer(visual, zero_shot_head(pos, neg)),
        "zs+": EmbeddingScorer(visual, zero_shot_head(bare)),
        "lp": EmbeddingScorer(visual, probe.torch_logits),
        "ft": EmbeddingScorer(ft.clip.visual, finetuned_head(ft))}
    control, pixels, prior = None, {}, None
    if has_masks:
        control = positive_control(study, control_config or ControlConfig(), progress=False)
        scorers["control"] = control.net
        pixels["control"] = control.pixels
        train = localization_pairs(study, "train", TRAIN_PAIRS_FOR_PRIOR)
        prior = regions.location_prior(train.masks, train.table.label)
    controls: dict[str, nn.Module] = {}
    if 0 in repeats.finetuned_seeds(study, "permuted"):
        perm = repeats.finetuned_scorer(study, "permuted")
        controls["ft-permuted"] = EmbeddingScorer(perm.clip.visual, finetuned_head(perm))
    names = {"zs": f"zero-shot ({zs_name})", **SETTING_NAMES}
    every = {**scorers, **controls}
    return CamSettings(study, scorers, controls, names, pixels,
                       {k: pairs_of(splits[k]) for k in every}, pairs_of(("val",)), prior,
                       control, zs_name, cam_layers(every), native_grid(visual), k_folds,
                       probe)


def cam_layers(models: Mapping[str, nn.Module]) -> dict[str, int]:
    """Each model's own CAM target (:func:`attribution.default_layer`): a CLS-pooled setting
    at its last block's input, the positive control (patch-pooled) at its final norm."""
    return {k: default_layer(m) for k, m in models.items()}


def finetune_objective(study: Study) -> str:
    """The objective of the fine-tune chapter 4 chose (its metrics record's parameters)."""
    return str(read_result(study.artefacts.metrics("ft"), "metrics", made_by="04_fine_tune")
               ["params"].get("objective", "unknown"))


def subsample(pairs: LocPairs, n: int, seed: int = 0) -> LocPairs:
    """At most ``n`` of ``pairs``, drawn without replacement by ``seed``, in pair order."""
    pick = np.random.default_rng(seed).choice(len(pairs), min(n, len(pairs)), replace=False)
    return pairs.subset(np.sort(pick))


# --------------------------------------------------------------------------------------
# Reference maps and every setting, summarised
# --------------------------------------------------------------------------------------


def reference_makers(cs: CamSettings) -> dict[str, Callable[[LocPairs], np.ndarray]]:
    """Maps whose scores are known, as functions of the pairs: oracle, uniform, random,
    centre, random grid (:func:`regions.reference_maps`) and, in ``demo``, the location prior."""
    makers = {k: (lambda p, k=k: regions.reference_maps(k, p.masks, seed=0, grid=cs.grid))
              for k in regions.REFERENCE_MAPS}
    if cs.prior is not None:
        size = cs.study.info.image_size
        makers["location prior"] = lambda p: regions.prior_maps(cs.prior, p.table.label, size)
    return makers


def reference_summaries(cs: CamSettings, n_boot: int) -> dict[str, dict]:
    """Every reference map scored on the validation (thresholds) and base pairs, summarised
    (:func:`explain.summarise_setting`). The random-grid maps are read against the grid's
    chance level, the others against the area fraction."""
    out = {}
    for name, make in reference_makers(cs).items():
        grid = cs.grid if name == "random grid" else None
        out[name] = summarise_setting(score_maps(make(cs.tune), cs.tune, grid), cs.tune,
                                      score_maps(make(cs.base), cs.base, grid), cs.base, n_boot)
    return out


@dataclass
class EverySetting:
    """Every (setting, method) summarised (``methods``), Grad-CAM at every layer position
    (``layers``, keyed (setting, position index)), and the maps kept for figures (``kept``,
    per setting, per method: (n_keep, S, S))."""

    methods: dict[tuple[str, str], dict]
    layers: dict[tuple[str, int], dict]
    kept: dict[str, dict[str, np.ndarray]]

    def hits(self, key: str, method: str = "gradcam") -> np.ndarray:
        """Per-pair hit of one setting and method, in pair order."""
        return self.methods[(key, method)]["per_pair"]["hit_rate"]


def explain_every_setting(cs: CamSettings, n_boot: int, scorecam_pairs: int = 12,
                          keep: Mapping[str, Sequence[int]] | None = None,
                          progress: Callable[[str], None] | None = None) -> EverySetting:
    """Every one-pass method on every setting and control (and Grad-CAM at every layer
    position of the settings), thresholds tuned on validation pairs; ScoreCAM on
    ``scorecam_pairs`` of the scored pairs with Otsu's thresholds (no tuning pairs, by the
    threshold rule). ``keep``: per setting, indices of scored pairs whose maps are kept."""
    keep = keep or {}
    methods, layers, kept = {}, {}, {}
    for key in cs.keys():
        if progress:
            progress(key)
        is_setting = key in cs.scorers
        e_tune = cs.explain(key, cs.tune, layers=is_setting)
        e = cs.explain(key, cs.scored[key], layers=is_setting, keep=keep.get(key, ()))
        kept[key] = e.kept
        for m, st in e.stats.items():
            r = summarise_setting(e_tune.stats[m], cs.tune, st, cs.scored[key], n_boot)
            if "@" in m:
                layers[(key, int(m.split("@")[1]))] = r
            else:
                methods[(key, m)] = r
        if scorecam_pairs and is_setting:
            few = subsample(cs.scored[key], scorecam_pairs)
            st = cs.explain(key, few, ("scorecam",)).stats.get("scorecam")
            if st is not None:
                methods[(key, "scorecam")] = summarise_setting(
                    regions.concat_stats([]), few.subset([]), st, few, n_boot)
    return EverySetting(methods, layers, kept)


def summary_row(r: Mapping) -> dict[str, str]:
    """One summarised map set (:func:`regions.summarise`) as display cells."""
    def cell(name: str, signed: bool = False) -> str:
        return Estimate.read(r, name).format(signed=signed)

    return {"hit rate": cell("hit_rate"), "chance level": cell("chance"),
            "hit − chance": cell("hit_minus_chance", signed=True), "mIoU": cell("miou"),
            "IoU@0.1": cell("iou@0.1"),
            "degenerate maps": f"{r['n_degenerate']} / {r['n_pairs']}"}


def summary_table(summaries: Mapping, index_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Display table of summaries keyed by a name or a tuple of names (one row each)."""
    t = pd.DataFrame({k: summary_row(r) for k, r in summaries.items()}).T
    if index_names:
        t.index.names = list(index_names)
    return t


def method_table(cs: CamSettings, every: EverySetting) -> pd.DataFrame:
    """Every (setting, method): hit rate, chance level, hit − chance, mIoU, IoU@0.1,
    degenerate maps."""
    return summary_table({(cs.names[k], METHOD_NAMES[m]): r
                          for (k, m), r in every.methods.items()}, ["setting", "method"])


def layer_table(cs: CamSettings, every: EverySetting) -> pd.DataFrame:
    """Grad-CAM of every setting at every layer position, as :func:`method_table`."""
    positions = layer_positions(cs.scorers["zs"])
    return summary_table({(cs.names[k], positions[b]): r
                          for (k, b), r in every.layers.items()}, ["setting", "layer"])


def per_pathology_table(cs: CamSettings, every: EverySetting,
                        references: Mapping[str, dict]) -> pd.DataFrame:
    """Grad-CAM of every setting (and the location prior) per pathology: pairs, hit rate,
    chance level, mIoU and the threshold rule that applied."""
    def row(v: Mapping) -> dict:
        return {"n": v["n"], "hit rate": f"{v['hit_rate']:.3f}",
                "chance": f"{v['chance']:.3f}", "mIoU": f"{v['miou']:.3f}",
                "threshold": v["threshold"]}

    rows = {(lab, cs.names[k]): row(v) for k in cs.scorers
            for lab, v in every.methods[(k, "gradcam")]["per_label"].items()}
    if "location prior" in references:
        rows.update({(lab, "location prior"): row(v)
                     for lab, v in references["location prior"]["per_label"].items()})
    t = pd.DataFrame(rows).T.sort_index(level=0)
    t.index.names = ["pathology", "setting"]
    return t


def strip_pairs(summary: Mapping) -> dict:
    """A summary without its per-pair arrays (for the JSON record)."""
    return {k: v for k, v in summary.items() if k != "per_pair"}


# --------------------------------------------------------------------------------------
# Per-pair hits, from the first page to the second
# --------------------------------------------------------------------------------------


def _pair_ids(pairs: LocPairs) -> np.ndarray:
    return np.asarray(pairs.table.image_id.astype(str) + "|" + pairs.table.label.astype(str),
                      dtype=str)


def save_hits(path: str | Path, cs: CamSettings, every: EverySetting,
              references: Mapping[str, dict]) -> Path:
    """Write every key's per-pair Grad-CAM hit (and each reference map's on the base pairs)
    with the pairs they were scored on (``image_id|label``), atomically (.npz)."""
    arrays = {f"hit/{k}": every.hits(k) for k in cs.keys()}
    arrays.update({f"pairs/{k}": _pair_ids(cs.scored[k]) for k in cs.keys()})
    arrays.update({f"reference/{n}": r["per_pair"]["hit_rate"] for n, r in references.items()})
    arrays["pairs/base"] = _pair_ids(cs.base)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def load_hits(path: str | Path, cs: CamSettings) -> tuple[dict[str, np.ndarray],
                                                           dict[str, np.ndarray]]:
    """(per-key Grad-CAM hits, per-reference-map hits on the base pairs) written by
    :func:`save_hits`, checked to be on exactly this run's pairs; a missing or mismatched
    file names the chapter to re-run."""
    p = Path(path)
    again = "re-run 06_grad_cam with the same parameters (python -m helpers.book.runner 06_grad_cam)"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing; it is written by chapter 6: {again}")
    with np.load(p) as z:
        data = {k: z[k] for k in z.files}
    hits = {}
    for key in cs.keys():
        if f"hit/{key}" not in data or list(data[f"pairs/{key}"]) != list(_pair_ids(cs.scored[key])):
            raise ValueError(f"{p} holds Grad-CAM hits of other pairs than this run's for "
                             f"{cs.names[key]}: {again}")
        hits[key] = data[f"hit/{key}"]
    if list(data["pairs/base"]) != list(_pair_ids(cs.base)):
        raise ValueError(f"{p} holds reference maps of other pairs than this run's: {again}")
    refs = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("reference/")}
    return hits, refs


# --------------------------------------------------------------------------------------
# Tables and the record of the first page
# --------------------------------------------------------------------------------------


def pairs_table(cs: CamSettings) -> pd.DataFrame:
    """Per key: the splits it is scored on and its pairs, images and reports; last row, the
    validation pairs that tune the thresholds."""
    def counts(splits: str, pairs: LocPairs) -> dict:
        return {"scored on splits": splits, "pairs": len(pairs),
                "images": pairs.table.image_id.nunique(),
                "reports": pairs.table.report_id.nunique()}

    splits = scored_splits(cs.has_masks)
    rows = {cs.names[k]: counts(", ".join(splits[k]), cs.scored[k]) for k in cs.keys()}
    rows["threshold tuning (val)"] = counts("val", cs.tune)
    return pd.DataFrame(rows).T


def convention_table(cs: CamSettings, every: EverySetting) -> pd.DataFrame:
    """Grad-CAM of every setting under this book's conventions (ties share the hit; mIoU over
    every pair) and CheXlocalize's (first maximum; IoU where both masks are non-empty)."""
    columns = {"hit rate (this book)": "hit_rate",
               "hit rate (CheXlocalize, first maximum)": "hit_rate_literal",
               "mIoU (this book)": "miou",
               "mIoU (CheXlocalize, both masks non-empty)": "miou_literal"}
    return pd.DataFrame({cs.names[k]: {col: Estimate.read(r, name).format()
                                       for col, name in columns.items()}
                         for (k, m), r in every.methods.items()
                         if m == "gradcam" and k in cs.scorers}).T


def human_reference(cs: CamSettings, n_boot: int) -> dict | None:
    """Readers' agreement on the base pairs where the annotation file names several readers:
    ``{"hit": Estimate, "iou": Estimate, "n": pairs}``, CIs over reports; ``None`` without
    several readers."""
    if not cs.base.reader_masks:
        return None
    agreement = regions.reader_agreement(cs.base.reader_masks)
    groups = cs.base.table.report_id.to_numpy()[agreement["pair"]]
    out: dict = {"n": int(len(set(agreement["pair"])))}
    for k in ("hit", "iou"):
        v = agreement[k]
        out[k] = bootstrap_stat(lambda i, v=v: float(v[i].mean()), groups, n_boot)
    return out


def write_record(path: str | Path, cs: CamSettings, every: EverySetting,
                 references: Mapping[str, dict], human: dict | None, stamp: dict,
                 params: dict) -> Path:
    """The first page's JSON record: pairs per key, the scoring validation, every (setting,
    method) and (setting, layer) summary (without per-pair arrays), the positive control's
    record and the human reference, with the stamp and the parameters."""
    positions = layer_positions(cs.scorers["zs"])
    return write_result(
        path, "grad_cam", stamp, params,
        pairs={k: len(cs.scored[k]) for k in cs.keys()},
        scoring_validation={k: strip_pairs(r) for k, r in references.items()},
        settings=[{"setting": k, "method": m, **strip_pairs(r)}
                  for (k, m), r in every.methods.items()],
        layers=[{"setting": k, "layer": positions[b], "layer_index": b, **strip_pairs(r)}
                for (k, b), r in every.layers.items()],
        names=cs.names, native_grid=cs.grid,
        cam_layer={k: positions[b] for k, b in cs.layers.items()},
        control=None if cs.control is None else cs.control.record,
        human_reference=None if human is None else
        {k: v.record() if isinstance(v, Estimate) else v for k, v in human.items()})


GRID_CHECK_DRAWS = 20
"""Random grid maps drawn per pair by :func:`grid_chance_check`."""


def grid_chance_check(cs: CamSettings, n_boot: int, draws: int = GRID_CHECK_DRAWS
                      ) -> dict[str, Any]:
    """The grid chance level checked by simulation: each base pair's hit averaged over
    ``draws`` random grid maps (seeds 0 ..), minus the pair's grid chance level (Monte
    Carlo, :func:`regions.grid_chance`). Returns the mean hit, the mean chance, their
    difference (an :class:`Estimate`, 95% CI over reports) and ``consistent`` (the CI
    contains 0)."""
    masks = cs.base.masks
    hit = np.mean([regions.pointing_game(regions.reference_maps("random grid", masks, seed=s,
                                                                grid=cs.grid), masks)
                   for s in range(draws)], axis=0)
    chance = regions.grid_chance(masks, cs.grid)
    diff = bootstrap_stat(lambda i: float((hit[i] - chance[i]).mean()),
                          cs.base.table.report_id.to_numpy(), n_boot)
    return {"hit": float(hit.mean()), "chance": float(chance.mean()),
            "difference": diff, "draws": draws, "consistent": diff.contains(0.0)}


def grid_check_text(check: Mapping) -> str:
    """:func:`grid_chance_check` in words, saying plainly when the check fails."""
    diff = check["difference"].format(signed=True)
    said = (f"averaged over {check['draws']} random grid maps per pair they hit "
            f"{check['hit']:.3f} against a grid chance level of {check['chance']:.3f} "
            f"(difference {diff})")
    if check["consistent"]:
        return said + ": the level is confirmed"
    return (said + ": the level is not confirmed, so this check fails, and every "
            "'hit − chance' below is read against a level the simulation does not reproduce")
