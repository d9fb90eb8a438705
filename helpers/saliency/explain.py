"""Chapter 6's settings as explainable scorers, and one call that explains and scores them.

Every setting is a differentiable function of the image (B, 3, S, S) -> label scores (B, k)
that goes through the ViT image tower, so every attribution method of
:mod:`helpers.saliency.attribution` explains all of them the same way:

* zero-shot, chapter 2's selected classifier: the paired-prompt decision
  ``cos(e, v+) - cos(e, v-)`` with ``v+``, ``v-`` the (ensembled) prompt embeddings of the
  template chapter 2 selected on validation (:func:`zero_shot_classifier`);
* zero-shot, the original study's positive prompt only: ``cos(e, v+)`` of the bare label name;
* linear probe: the probe's logit (:meth:`probe.Probe.torch_logits`) through the frozen tower;
* fine-tuned: the fine-tuned :class:`finetune.LabelScorer`'s logit;
* positive control: :class:`localising.LocalisingNet` (its evidence is local by construction).

:func:`explain_pairs` computes the maps of one setting on (image, label) pairs batch by batch,
scores them at once against the chance level of maps on the tower's patch grid
(:func:`regions.pair_stats`, :func:`regions.grid_chance`) and keeps only the maps
asked for.
:func:`cascade` and :func:`randomised` make Adebayo et al.'s randomised copies of a scorer.
Ground-truth regions are brought to the model's input geometry by :func:`to_input_geometry`
and loaded from phantom bitmasks by :func:`load_masks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from helpers.book.artefacts import read_result
from helpers.data.images import to_model_input
from helpers.phantoms.rendering import mask_of
from helpers.protocols.probe import fit_probe
from helpers.protocols.zeroshot import (
    PROB_MODES,
    SINGLE_PROMPT,
    TEMPLATES,
    ensemble_embedding,
    prompts,
    single_prompt_texts,
)
from helpers.saliency import regions
from helpers.saliency.attribution import (
    METHODS,
    ONE_PASS,
    iter_maps,
    native_grid,
    trunk_of,
    vit_reshape,
)
from helpers.saliency.regions import (
    fold_assignment,
    grid_chance,
    holdout_training_rows,
    pair_stats,
    summarise,
    tune_thresholds,
)


class EmbeddingScorer(nn.Module):
    """Image tower + a head on its embedding: images (B, 3, S, S) -> label scores (B, k)."""

    def __init__(self, visual: nn.Module, head: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


def zero_shot_head(pos_emb: np.ndarray, neg_emb: np.ndarray | None = None
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Zero-shot score as a function of the image embedding (B, d) -> (B, k).

    With ``neg_emb``: the paired-prompt decision ``cos(e, v+) - cos(e, v-)`` (chapter 2's rule, up
    to the temperature); without: the cosine similarity with the positive prompt alone.
    ``pos_emb``, ``neg_emb``: (k, d) text embeddings, one per label.
    """
    p = nn.functional.normalize(torch.as_tensor(pos_emb, dtype=torch.float32), dim=-1)
    if neg_emb is not None:
        p = p - nn.functional.normalize(torch.as_tensor(neg_emb, dtype=torch.float32), dim=-1)
    d = p
    return lambda e: nn.functional.normalize(e, dim=-1) @ d.to(e.device, e.dtype).T


def parse_classifier(name: str) -> tuple[str, bool, str | None]:
    """Chapter 2's classifier name -> (template, ensemble, probability mode).

    Paired prompts: ``"sentence+ensemble"`` -> ``("sentence", True, None)``; the original study's single
    prompt: ``"single prompt (minmax)"`` -> ``("bare", False, "minmax")``.
    """

    for mode in PROB_MODES:
        if name == SINGLE_PROMPT.format(mode=mode):
            return "bare", False, mode
    template, _, rest = str(name).partition("+")
    if template not in TEMPLATES or rest not in ("", "ensemble"):
        singles = ", ".join(repr(SINGLE_PROMPT.format(mode=m)) for m in PROB_MODES)
        raise ValueError(f"unknown zero-shot classifier {name!r}: expected '<template>' or "
                         f"'<template>+ensemble' with a template among {', '.join(TEMPLATES)}, "
                         f"or one of {singles}")
    return template, rest == "ensemble", None


def zero_shot_classifier(study, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Positive and negative text embeddings (k, d) of the classifier ``name`` (chapter 2's
    ``params.selected``): each side the renormalised mean of its prompts' embeddings.

    For the original study's single prompt (any probability mode) the negative side is ``None``: the
    explained score of label ``j`` is the cosine with its one prompt, the label's own logit
    before the mode's scaling across labels (sigmoid is monotone in it; softmax and min-max
    also depend on the other labels' logits, which a per-label map cannot show).
    """

    template, ens, mode = parse_classifier(name)
    if mode is not None:
        return study.text_embeddings(single_prompt_texts(template, study.labels)), None
    pos, neg = zip(*(prompts(c, template, ens) for c in study.labels))
    P = np.stack([ensemble_embedding(study.text_embeddings(list(p))) for p in pos])
    N = np.stack([ensemble_embedding(study.text_embeddings(list(n))) for n in neg])
    return P, N


def selected_classifier(study) -> str:
    """The zero-shot classifier chapter 2 selected on validation (its metrics JSON)."""
    path = study.artefacts.metrics("zs")
    sel = read_result(path, "metrics", made_by="02_zero_shot")["params"].get("selected")
    if not sel:
        raise ValueError(f"{path} names no selected classifier under params.selected; re-run chapter 2")
    return str(sel)


def finetuned_head(scorer) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fine-tuned :class:`finetune.LabelScorer`'s logit as a function of the image embedding
    (the text directions computed once: only the image side is explained)."""
    directions = None
    if scorer.head is None:
        with torch.no_grad():
            directions = scorer.text_directions().float()
    return lambda e: scorer.embedding_logits(e, directions)


# --------------------------------------------------------------------------------------
# Ground-truth regions at the model's input geometry
# --------------------------------------------------------------------------------------


def to_input_geometry(mask: np.ndarray, size: int) -> np.ndarray:
    """A bool region (h, w) in original pixels -> (size, size) at the model's input geometry: the
    geometry the image goes through (open_clip: shorter side to ``size``, centre crop), with
    nearest-neighbour sampling so the region stays binary."""
    import cv2

    h, w = mask.shape
    s = min(h, w)
    m = mask[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    return cv2.resize(m.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)


def load_masks(mask_paths: Sequence[str], labels: Sequence[str], size: int) -> np.ndarray:
    """Ground-truth regions (n, size, size) bool from phantom bitmask PNGs, one label per path,
    at the model's input geometry (:func:`to_input_geometry`). Each file is read once."""
    import cv2


    out = np.zeros((len(mask_paths), size, size), bool)
    bits_of: dict[str, np.ndarray] = {}
    for i, (p, lab) in enumerate(zip(mask_paths, labels)):
        if str(p) not in bits_of:
            bits = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            if bits is None:
                raise FileNotFoundError(f"cannot read mask {p}: expected a 16-bit PNG bitmask "
                                        "written by helpers.phantoms.rendering")
            bits_of = {str(p): bits}  # masks of one image come together; keep one file at a time
        out[i] = to_input_geometry(mask_of(bits_of[str(p)], lab), size)
    return out


# --------------------------------------------------------------------------------------
# Explain and score one setting
# --------------------------------------------------------------------------------------


@dataclass
class Explained:
    """One setting's maps on some pairs, scored: ``stats[key]`` per method (and ``gradcam@b`` per
    block) as :func:`regions.pair_stats`; ``kept[key]`` the maps of the ``keep`` pairs
    (S, S), ``small[key]`` every map block-averaged (for rank correlations) when asked."""

    stats: dict[str, dict[str, np.ndarray]]
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    small: dict[str, np.ndarray] = field(default_factory=dict)


def explain_pairs(scorer: nn.Module, study, pairs, methods: Sequence[str] = ONE_PASS,
                  layers: bool = False, keep: Sequence[int] = (), small: bool = False,
                  layer: int | None = None, progress: bool = True, desc: str = "maps",
                  pixels=None) -> Explained:
    """Maps of ``pairs`` (:class:`study.LocPairs`) by ``methods``, scored against their regions.

    ``keep``: indices of pairs whose full maps are returned (figures), in increasing order;
    ``small``: also return every map block-averaged 4x4 (:func:`regions.downsample`).
    ``layer``: the CAM methods' target (:func:`attribution.default_layer` by default); with
    ``layers``, Grad-CAM at every layer position too (keys ``gradcam@i``). ``pixels``: another
    image cache with the study's rows (the positive control's marked images), else the study's.
    """

    lab_idx = np.array([study.labels.index(c) for c in pairs.table.label], dtype=int)
    parts: dict[str, list] = {}
    kept: dict[str, list] = {}
    smalls: dict[str, list] = {}
    keep = np.asarray(keep, dtype=int)
    px = study.pixels if pixels is None else pixels
    grid = native_grid(scorer)
    for sl, maps in iter_maps(scorer, px, pairs.table.row.to_numpy(), lab_idx, study.info.mean,
                              study.info.std, methods, layer, layers, progress=progress, desc=desc):
        idx = np.arange(sl.start, sl.stop)
        here = np.isin(idx, keep)
        chance = regions.grid_chance(pairs.masks[sl], grid)
        for k, m in maps.items():
            parts.setdefault(k, []).append(regions.pair_stats(m, pairs.masks[sl], chance))
            if here.any():
                kept.setdefault(k, []).append(m[here])
            if small:
                smalls.setdefault(k, []).append(regions.downsample(m))
    return Explained({k: regions.concat_stats(v) for k, v in parts.items()},
                     {k: np.concatenate(v) for k, v in kept.items()},
                     {k: np.concatenate(v) for k, v in smalls.items()})


def score_maps(maps: np.ndarray, pairs, grid: int | None = None) -> dict[str, np.ndarray]:
    """:func:`regions.pair_stats` of maps already in memory (reference maps, the prior),
    against the chance level of maps on a ``grid x grid`` native grid (``None``: per pixel)."""

    return pair_stats(maps, pairs.masks, grid_chance(pairs.masks, grid))


def summarise_setting(tune_stats: dict[str, np.ndarray], tune, stats: dict[str, np.ndarray], pairs,
                      n_boot: int = 200, seed: int = 0) -> dict:
    """Thresholds tuned on ``tune`` pairs' stats, then :func:`regions.summarise` of ``pairs``
    (both :class:`study.LocPairs`; stats as :func:`regions.pair_stats`)."""

    th = tune_thresholds(tune_stats, tune.table.label, tune.table.report_id, pairs.table.label,
                         pairs.table.report_id)
    return summarise(stats, th, pairs.table.label.to_numpy(), pairs.table.report_id.to_numpy(),
                     n_boot, seed)


def holdout_probes(study, probe, pairs, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, object]]:
    """Probes that never saw the image they explain: ``[(pair indices, probe), ...]`` covering
    every pair once.

    Pairs whose image is outside the training split take chapter 3's ``probe``. Pairs of
    training images are dealt into ``k`` folds by report (:func:`regions.fold_assignment`);
    fold ``f`` takes a probe fitted (same ``C`` and class weights as ``probe``) on the training
    rows of every other report (:func:`regions.holdout_training_rows`).
    """

    inside = (pairs.table.split == "train").to_numpy()
    out: list[tuple[np.ndarray, object]] = []
    if (~inside).any():
        out.append((np.flatnonzero(~inside), probe))
    if inside.any():
        emb, y = study.image_embeddings(), study.y()
        train, val = study.rows("train"), study.rows("val")
        idx = np.flatnonzero(inside)
        sg = pairs.table.report_id.to_numpy()[idx]
        folds = fold_assignment(sg, min(k, len(set(sg))), seed)
        for f, fit in enumerate(holdout_training_rows(train, study.groups(train), sg, folds)):
            p = fit_probe(emb[fit], y[fit], emb[val], y[val], Cs=(probe.C,),
                          class_weight=probe.class_weight)
            out.append((idx[folds == f], p))
    return out


# --------------------------------------------------------------------------------------
# Model randomisation (Adebayo et al. 2018)
# --------------------------------------------------------------------------------------


NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
"""Modules whose weight is a scale: re-initialised to the identity (weight 1, bias 0)."""
EMBEDDINGS = ("cls_token", "pos_embed", "reg_token")


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, NORM_TYPES) or type(m).__name__.endswith(("Norm", "Norm2d"))


def reinitialise(module: nn.Module, gen: torch.Generator) -> None:
    """Re-draw a module's weights in place: the architecture with none of what it
    learned.

    Matrices and token embeddings (CLS, position, register) ``N(0, 0.02)``; every
    normalisation module (found by its type, whatever its parameters are called, so the
    module itself may be a LayerNorm) the identity, weight 1 and bias 0; a LayerScale
    ``gamma`` 1; other vectors (biases) 0. No re-drawn module outputs a constant: a
    weight of 0 in a norm would zero the whole tower (the bug this replaced).
    """
    with torch.no_grad():
        norm_params = {id(p): name for m in module.modules() if _is_norm(m)
                       for name, p in m.named_parameters(recurse=False)}
        for name, p in module.named_parameters():
            leaf = name.split(".")[-1]
            if id(p) in norm_params:
                p.fill_(1.0 if norm_params[id(p)] == "weight" else 0.0)
            elif p.ndim >= 2 or leaf in EMBEDDINGS:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif leaf == "gamma":
                p.fill_(1.0)
            else:
                p.zero_()


@dataclass
class StepCheck:
    """Whether a randomised scorer still computes something (:func:`check_randomised`):
    its scores and input gradients are non-zero and differ from the trained scorer's."""

    output_nonzero: bool
    gradient_nonzero: bool
    output_differs: bool
    gradient_differs: bool

    @property
    def ok(self) -> bool:
        return all(vars(self).values())


def _scores_and_grads(scorer: nn.Module, x: torch.Tensor, label_idx: Sequence[int]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    out = scorer.eval()(x)
    sel = out[torch.arange(len(x)), torch.as_tensor(list(label_idx))]
    (g,) = torch.autograd.grad(sel.sum(), x)
    return sel.detach(), g.detach()


def check_randomised(trained: nn.Module, randomised: nn.Module, x: torch.Tensor,
                     label_idx: Sequence[int], tol: float = 1e-8) -> StepCheck:
    """Compare a randomised copy with the trained scorer on images ``x`` (B, 3, S, S) for one
    label per image: a step whose scores or input gradients are all zero, or identical to the
    trained model's, has not randomised anything that its maps could show."""
    s0, g0 = _scores_and_grads(trained, x, label_idx)
    s1, g1 = _scores_and_grads(randomised, x, label_idx)
    return StepCheck(bool(s1.abs().max() > tol), bool(g1.abs().max() > tol),
                     bool((s1 - s0).abs().max() > tol), bool((g1 - g0).abs().max() > tol))


MAX_DEGENERATE_SHARE = 0.5
"""A randomisation step whose maps are degenerate on more than this share of pairs has failed:
it is reported as such and never scored (a constant map would score the chance level)."""


def randomisation_health(trained: nn.Module, randomised: nn.Module, study, pairs,
                         degenerate: np.ndarray, pixels=None, n_images: int = 8) -> dict:
    """Whether a randomised copy can be scored: :func:`check_randomised` on the first
    ``n_images`` pairs' images (their own labels), and the share of its maps that are
    degenerate (``degenerate``: (n,) bool from its :func:`explain_pairs` stats).

    Returns ``{"scores_nonzero", "gradients_nonzero", "differs", "degenerate_share",
    "failed"}``; ``failed`` when the check fails or more than :data:`MAX_DEGENERATE_SHARE`
    of the maps are degenerate.
    """

    px = study.pixels if pixels is None else pixels
    t = pairs.table.iloc[:n_images]
    x = to_model_input(np.asarray(px.pixels[t.row.to_numpy()]), study.info.mean, study.info.std)
    lab = [study.labels.index(c) for c in t.label]
    chk = check_randomised(trained, randomised, x, lab) if len(t) else None
    share = float(np.mean(degenerate)) if len(degenerate) else 0.0
    ok = chk is not None and chk.ok
    return {"scores_nonzero": bool(chk and chk.output_nonzero),
            "gradients_nonzero": bool(chk and chk.gradient_nonzero),
            "differs": bool(chk and chk.output_differs and chk.gradient_differs),
            "degenerate_share": share, "failed": bool(not ok or share > MAX_DEGENERATE_SHARE)}


def cascade_steps(scorer: nn.Module) -> list[tuple[str, list[str]]]:
    """The cascading randomisation order, top down: (step name, module paths re-drawn at it).

    The scorer's own trainable head (if any), the tower's projection, its final norm, the blocks
    from last to first, and the patch embedding (with CLS and position embeddings).
    """
    trunk = trunk_of(scorer)
    visual = getattr(scorer, "visual", None)
    prefix = "visual.trunk" if visual is not None else "trunk"
    steps: list[tuple[str, list[str]]] = []
    head = getattr(scorer, "head", None)
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        steps.append(("head", ["head"]))
    if visual is not None and isinstance(getattr(visual, "head", None), nn.Module):
        steps.append(("projection", ["visual.head"]))
    steps.append(("final norm", [f"{prefix}.norm"]))
    for b in reversed(range(len(trunk.blocks))):
        steps.append((f"block {b}", [f"{prefix}.blocks.{b}"]))
    steps.append(("patch embedding", [f"{prefix}.patch_embed", f"{prefix}.<embeddings>"]))
    return steps


def _get(obj: nn.Module, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _reinit_path(scorer: nn.Module, path: str, gen: torch.Generator) -> None:
    if path.endswith(".<embeddings>"):
        trunk = _get(scorer, path[: -len(".<embeddings>")])
        with torch.no_grad():
            for name in ("cls_token", "pos_embed", "reg_token"):
                p = getattr(trunk, name, None)
                if isinstance(p, torch.Tensor):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        return
    mod = _get(scorer, path)
    if mod is not None:
        reinitialise(mod, gen)


def cascade(scorer: nn.Module, seed: int = 0) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(step name, scorer copy)`` with every step up to this one re-initialised.

    One copy is made and randomised further at each step (the yielded object changes in place:
    compute its maps before asking for the next step).
    """
    import copy

    rnd = copy.deepcopy(scorer).eval()
    gen = torch.Generator().manual_seed(seed)
    for name, paths in cascade_steps(scorer):
        for p in paths:
            _reinit_path(rnd, p, gen)
        yield name, rnd


def randomised(scorer: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of the scorer with every step of :func:`cascade_steps` re-initialised."""
    last = None
    for _, last in cascade(scorer, seed):
        pass
    return last
