"""Attribution maps of a ViT image tower for one label's score: seven methods, one forward pass.

A *scorer* is any ``nn.Module`` mapping images (B, 3, S, S) to label scores (B, k) whose image
tower is a timm ``VisionTransformer`` reachable as ``scorer.visual.trunk`` or ``scorer.trunk``
(:func:`trunk_of`). Methods:

* ``gradcam`` (Selvaraju et al. 2017), ``gradcam++`` (Chattopadhay et al. 2018), ``layercam``
  (Jiang et al. 2021), ``eigencam`` (Muhammad & Yeasin 2020), ``scorecam`` (Wang et al. 2020):
  pytorch-grad-cam on a block's ``norm1`` output, its tokens reshaped to the ``g x g`` patch grid
  (CLS dropped, :func:`vit_reshape`). EigenCAM is class-agnostic (the first principal component
  of the activations): every label of an image gets the same map.
* ``rollout`` (Abnar & Zuidema 2020): ``R = prod_b (A_b + I) / 2`` over blocks, ``A_b`` the
  head-averaged attention (rows renormalised); the map is the read-out row of ``R`` over the
  patch columns. Class-agnostic.
* ``chefer`` (Chefer, Gur & Wolf 2021, gradient-weighted attention): ``R = I``; for each block,
  ``R <- R + mean_h[(dA_b/ds * A_b)^+] R``; the map is the read-out row of ``R``.

The read-out row is the CLS token's for a CLS-pooled tower (BiomedCLIP, tiny) and the mean of the
patch rows for a model that pools its patch tokens (``scorer.readout == "patches"``).

**Attention probabilities.** timm's ``Attention`` uses fused ``scaled_dot_product_attention``
when it can, which never materialises the attention matrix. For explanation,
:func:`attention_capture` sets ``fused_attn = False`` on every block (timm then computes
``softmax(q k^T / sqrt(d))`` explicitly and passes it through ``attn_drop``, an identity in eval
mode) and hooks ``attn_drop`` to keep the probabilities and, on the backward pass, their
gradients. The flag is restored on exit; the outputs are the same up to float rounding.

**One pass.** :func:`explain_batch` runs one forward and one backward pass per batch: Grad-CAM's
own call through pytorch-grad-cam captures activations and gradients of every block's ``norm1``
and the attention of every block; Grad-CAM++, LayerCAM and EigenCAM are then computed by their
pytorch-grad-cam classes from the same activations and gradients, Grad-CAM at every block
(the layer-wise curves), rollout and Chefer from the attention. ScoreCAM needs one forward per
activation channel and image, so it runs on its own (:func:`scorecam_batch`) on a subset.

Every map is (S, S) in [0, 1], min-max scaled per map as pytorch-grad-cam scales its maps.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

METHODS = ("gradcam", "gradcam++", "layercam", "eigencam", "rollout", "chefer", "scorecam")
ONE_PASS = METHODS[:-1]
CLASS_AGNOSTIC = ("eigencam", "rollout")
NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "layercam": "LayerCAM",
         "eigencam": "EigenCAM", "rollout": "attention rollout", "chefer": "Chefer et al.",
         "scorecam": "ScoreCAM"}


def vit_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """ViT tokens (B, 1 + g*g, C) -> activation grid (B, C, g, g), dropping the CLS token."""
    n = tokens.shape[1] - 1
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ValueError(f"cannot reshape {n} patch tokens into a square grid (expected 1 CLS + g*g tokens)")
    return tokens[:, 1:, :].reshape(tokens.shape[0], g, g, tokens.shape[2]).permute(0, 3, 1, 2)


def trunk_of(scorer: nn.Module) -> nn.Module:
    """The timm ``VisionTransformer`` inside a scorer (``.visual.trunk`` or ``.trunk``)."""
    visual = getattr(scorer, "visual", None)
    trunk = getattr(visual, "trunk", None) if visual is not None else getattr(scorer, "trunk", None)
    if trunk is None or not hasattr(trunk, "blocks"):
        raise TypeError(f"{type(scorer).__name__} has no timm ViT at .visual.trunk or .trunk: "
                        "expected a scorer built on a CLIP image tower")
    return trunk


def scale(cams: np.ndarray, size: int) -> np.ndarray:
    """pytorch-grad-cam's post-processing: ReLU, min-max scale, resize to (size, size), rescale."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    return scale_cam_image(scale_cam_image(np.maximum(cams, 0), (size, size)))


@contextlib.contextmanager
def attention_capture(trunk: nn.Module) -> Iterator[list[dict]]:
    """Within the block: each block's attention (B, H, N, N) and, after backward, its gradient.

    Yields a list with one dict per block, filled on every forward (``"attn"``) and backward
    (``"grad"``). See the module docstring for why ``fused_attn`` is switched off here.
    """
    store: list[dict] = [{} for _ in trunk.blocks]
    handles, flags = [], []

    def hook(i):
        def fn(_module, _inp, out):
            store[i]["attn"] = out.detach()
            if out.requires_grad:
                out.register_hook(lambda g: store[i].__setitem__("grad", g.detach()))
        return fn

    for i, blk in enumerate(trunk.blocks):
        flags.append(blk.attn.fused_attn)
        blk.attn.fused_attn = False
        handles.append(blk.attn.attn_drop.register_forward_hook(hook(i)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
        for blk, f in zip(trunk.blocks, flags):
            blk.attn.fused_attn = f


def _readout(rel: torch.Tensor, n_prefix: int, readout: str) -> torch.Tensor:
    """Patch relevance (B, P) from a token-relevance matrix (B, N, N)."""
    rows = rel[:, 0] if readout == "cls" else rel[:, n_prefix:].mean(1)
    return rows[:, n_prefix:]


def rollout(attn: Sequence[torch.Tensor], n_prefix: int = 1, readout: str = "cls") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): patch relevance (B, P) from each block's
    attention (B, H, N, N): ``R = prod_b norm((mean_h A_b + I) / 2)``, first block rightmost."""
    r = None
    for a in attn:
        a = a.float().mean(1)
        eye = torch.eye(a.shape[-1], device=a.device)
        a = (a + eye) / 2
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    return _readout(r, n_prefix, readout)


def chefer(attn: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], n_prefix: int = 1,
           readout: str = "cls") -> torch.Tensor:
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf 2021): patch relevance (B, P).

    ``R = I``; for each block ``R <- R + mean_h[(grad_A * A)^+] @ R``.
    """
    B, _, N, _ = attn[0].shape
    r = torch.eye(N, device=attn[0].device).expand(B, N, N).clone()
    for a, g in zip(attn, grads):
        cam = (g.float() * a.float()).clamp_min(0).mean(1)
        r = r + cam @ r
    return _readout(r, n_prefix, readout)


def _grid_maps(patch: torch.Tensor, size: int) -> np.ndarray:
    """Patch relevance (B, P) -> maps (B, size, size) in [0, 1]."""
    g = int(round(patch.shape[1] ** 0.5))
    return scale(patch.reshape(-1, g, g).detach().cpu().numpy(), size)


def _cam_objects(scorer: nn.Module, layers: list[nn.Module]) -> dict:
    """pytorch-grad-cam objects; only Grad-CAM's keeps its hooks (it runs the pass)."""
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM

    objs = {"gradcam": GradCAM(scorer, layers, reshape_transform=vit_reshape)}
    for name, cls in (("gradcam++", GradCAMPlusPlus), ("layercam", LayerCAM), ("eigencam", EigenCAM)):
        objs[name] = cls(scorer, layers[:1], reshape_transform=vit_reshape)
        objs[name].activations_and_grads.release()
    return objs


def explain_batch(scorer: nn.Module, x: torch.Tensor, label_idx: Sequence[int], block: int = -1,
                  methods: Sequence[str] = ONE_PASS, layers: bool = False) -> dict[str, np.ndarray]:
    """Maps of one batch (B, 3, S, S) for one label per image, by every method of ``methods``
    (all in :data:`ONE_PASS`) from a single forward and backward pass.

    Returns ``{method: (B, S, S)}``; with ``layers``, also ``{"gradcam@b": (B, S, S)}`` for every
    block ``b`` (Grad-CAM on that block's ``norm1``).
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    bad = [m for m in methods if m not in ONE_PASS]
    if bad:
        raise ValueError(f"unknown one-pass methods {bad}; valid: {', '.join(ONE_PASS)}")
    trunk = trunk_of(scorer)
    nb = len(trunk.blocks)
    block = block % nb
    order = list(range(nb)) if layers else [block]  # forward order: how the hooks fill the lists
    main = order.index(block)
    S = x.shape[-1]
    targets = [ClassifierOutputTarget(int(j)) for j in label_idx]
    readout = getattr(scorer, "readout", "cls")
    n_prefix = int(getattr(trunk, "num_prefix_tokens", 1))
    objs = _cam_objects(scorer.eval(), [trunk.blocks[b].norm1 for b in order])
    out: dict[str, np.ndarray] = {}
    try:
        with attention_capture(trunk) as att:
            objs["gradcam"](input_tensor=x, targets=targets)  # the pass; per-layer maps below
            ag = objs["gradcam"].activations_and_grads
            acts = [a.numpy() for a in ag.activations]
            grads = [g.numpy() for g in ag.gradients]
        for name in [m for m in methods if m in objs]:
            cam = objs[name].get_cam_image(x, None, targets, acts[main], grads[main], False)
            out[name] = scale(cam, S)
        if layers:
            gc = objs["gradcam"]
            for b, a, g in zip(order, acts, grads):
                out[f"gradcam@{b}"] = scale(gc.get_cam_image(x, None, targets, a, g, False), S)
        if "rollout" in methods:
            out["rollout"] = _grid_maps(rollout([s["attn"] for s in att], n_prefix, readout), S)
        if "chefer" in methods:
            out["chefer"] = _grid_maps(chefer([s["attn"] for s in att], [s["grad"] for s in att],
                                              n_prefix, readout), S)
    finally:
        objs["gradcam"].activations_and_grads.release()
    scorer.zero_grad(set_to_none=True)
    return out


@contextlib.contextmanager
def _quiet_scorecam() -> Iterator[None]:
    """pytorch-grad-cam's ScoreCAM opens a progress bar per image; silence it (ours covers it)."""
    import pytorch_grad_cam.score_cam as sc

    real = sc.tqdm

    class _Quiet:
        @staticmethod
        def tqdm(it, *a, **k):
            return it

    sc.tqdm = _Quiet
    try:
        yield
    finally:
        sc.tqdm = real


def scorecam_batch(scorer: nn.Module, x: torch.Tensor, label_idx: Sequence[int], block: int = -1,
                   batch_size: int = 64) -> np.ndarray:
    """ScoreCAM maps (B, S, S): one forward per activation channel per image (expensive)."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    trunk = trunk_of(scorer)
    targets = [ClassifierOutputTarget(int(j)) for j in label_idx]
    with _quiet_scorecam(), ScoreCAM(scorer.eval(), [trunk.blocks[block].norm1],
                                     reshape_transform=vit_reshape) as cam:
        cam.batch_size = batch_size
        return np.asarray(cam(input_tensor=x, targets=targets), dtype=np.float32)


def iter_maps(scorer: nn.Module, pixels, rows: Sequence[int], label_idx: Sequence[int], mean, std,
              methods: Sequence[str] = ONE_PASS, block: int = -1, layers: bool = False,
              batch_size: int = 32, progress: bool = True, desc: str = "maps"
              ) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """Maps of pixel-cache ``rows`` (one label index per row), batch by batch.

    Yields ``(slice into rows, {method: (b, S, S)})``; ``scorecam`` in ``methods`` runs it too.
    """
    from tqdm.auto import tqdm

    from .images import to_model_input

    rows, label_idx = np.asarray(rows), np.asarray(label_idx)
    if len(rows) != len(label_idx):
        raise ValueError(f"rows ({len(rows)}) and label_idx ({len(label_idx)}) differ in length")
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown attribution methods {bad}; valid: {', '.join(METHODS)}")
    dev = next(scorer.parameters()).device
    one = [m for m in methods if m in ONE_PASS]
    for i in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress, leave=False):
        sl = slice(i, min(i + batch_size, len(rows)))
        x = to_model_input(np.asarray(pixels.pixels[rows[sl]]), mean, std).to(dev)
        maps = explain_batch(scorer, x, label_idx[sl], block, one or ("gradcam",), layers) if (one or layers) else {}
        if "scorecam" in methods:
            maps["scorecam"] = scorecam_batch(scorer, x, label_idx[sl], block)
        yield sl, maps


def compute_maps(scorer: nn.Module, pixels, rows: Sequence[int], label_idx: Sequence[int], mean, std,
                 method: str = "gradcam", block: int = -1, batch_size: int = 32,
                 progress: bool = True) -> np.ndarray:
    """Maps (n, S, S) in [0, 1] of one method for pixel-cache ``rows``, one label index per row."""
    S = pixels.pixels.shape[-1]
    parts = [m[method] for _, m in iter_maps(scorer, pixels, rows, label_idx, mean, std, (method,),
                                              block, False, batch_size, progress, method)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, S, S), np.float32)


# --------------------------------------------------------------------------------------
# Model randomisation (Adebayo et al. 2018)
# --------------------------------------------------------------------------------------


def reinitialise(module: nn.Module, gen: torch.Generator) -> None:
    """Re-draw a module's weights in place: matrices N(0, 0.02), norm weights 1, other vectors 0
    (and CLS / position embeddings N(0, 0.02)): the architecture with none of what it learned."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2 or name.split(".")[-1] in ("cls_token", "pos_embed", "reg_token"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()


def cascade_steps(scorer: nn.Module) -> list[tuple[str, list[str]]]:
    """The cascading randomisation order, top down: (step name, module paths re-drawn at it).

    The scorer's own trainable head (if any), the tower's projection, its final norm, the blocks
    from last to first, and the patch embedding (with CLS and position embeddings).
    """
    trunk = trunk_of(scorer)
    visual = getattr(scorer, "visual", None)
    prefix = "visual.trunk" if visual is not None else "trunk"
    steps: list[tuple[str, list[str]]] = []
    if isinstance(getattr(scorer, "head", None), nn.Module) and any(True for _ in scorer.head.parameters()):
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
