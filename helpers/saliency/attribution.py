"""Attribution maps of a ViT image tower for one label's score: seven methods, one forward pass.

A *scorer* is any ``nn.Module`` mapping images (B, 3, S, S) to label scores (B, k) whose image
tower is a timm ``VisionTransformer`` reachable as ``scorer.visual.trunk`` or ``scorer.trunk``
(:func:`trunk_of`). Methods:

* ``gradcam`` (Selvaraju et al. 2017), ``gradcam++`` (Chattopadhay et al. 2018), ``layercam``
  (Jiang et al. 2021), ``eigencam`` (Muhammad & Yeasin 2020), ``scorecam`` (Wang et al. 2020):
  pytorch-grad-cam on one layer's tokens reshaped to the ``g x g`` patch grid (CLS dropped,
  :func:`vit_reshape`). The layer (:func:`default_layer`) is the last one whose patch tokens
  reach the score: the input (``norm1``) of the last block for a CLS-pooled tower (at its output
  only the CLS token is read, so every patch gradient there is zero), the tower's final norm for
  a model that pools its patch tokens. EigenCAM is class-agnostic (the first principal component
  of the activations): every label of an image gets the same map.
* ``rollout`` (Abnar & Zuidema 2020): ``R = prod_b (A_b + I) / 2`` over blocks, ``A_b`` the
  head-averaged attention (rows renormalised); the map is the CLS row of ``R`` over the patch
  columns (the mean of the patch rows for a patch-pooled model, ``scorer.readout ==
  "patches"``). Class-agnostic.
* ``chefer`` (Chefer, Gur & Wolf 2021, gradient-weighted attention): ``R = I``; for each block,
  ``R <- R + mean_h[(dA_b/ds * A_b)^+] R``; the map is the read-out row of ``R``: the rows of the
  output tokens weighted by their share of the score's gradient (exactly the CLS row for a
  CLS-pooled tower; the patches that drive a pooled head for a patch-pooled one).

**Attention probabilities.** timm's ``Attention`` uses fused ``scaled_dot_product_attention``
when it can, which never materialises the attention matrix. For explanation,
:func:`attention_capture` sets ``fused_attn = False`` on every block (timm then computes
``softmax(q k^T / sqrt(d))`` explicitly and passes it through ``attn_drop``, an identity in eval
mode) and hooks ``attn_drop`` to keep the probabilities and, on the backward pass, their
gradients. The flag is restored on exit; the outputs are the same up to float rounding.

**One pass.** :func:`explain_batch` runs one forward and one backward pass per batch: Grad-CAM's
own call through pytorch-grad-cam captures activations and gradients of the target layer (of
every layer position, for the layer-wise curves) and the attention of every block; Grad-CAM++,
LayerCAM and EigenCAM are then computed by their pytorch-grad-cam classes from the same
activations and gradients, rollout and Chefer from the attention. ScoreCAM needs one forward per
activation channel and image, so it runs on its own (:func:`scorecam_batch`) on a subset.

Every map is (S, S) in [0, 1], min-max scaled per map as pytorch-grad-cam scales its maps.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from helpers.book.progress import bar as tqdm
from helpers.data.images import to_model_input

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
        raise ValueError(f"cannot reshape {n} patch tokens into a square grid "
                         "(expected 1 CLS + g*g tokens)")
    return tokens[:, 1:, :].reshape(tokens.shape[0], g, g, tokens.shape[2]).permute(0, 3, 1, 2)


def trunk_of(scorer: nn.Module) -> nn.Module:
    """The timm ``VisionTransformer`` inside a scorer (``.visual.trunk`` or ``.trunk``)."""
    visual = getattr(scorer, "visual", None)
    trunk = getattr(visual, "trunk", None) if visual is not None else getattr(scorer, "trunk", None)
    if trunk is None or not hasattr(trunk, "blocks"):
        raise TypeError(f"{type(scorer).__name__} has no timm ViT at .visual.trunk or .trunk: "
                        "expected a scorer built on a CLIP image tower")
    return trunk


def native_grid(scorer: nn.Module) -> int:
    """The side ``g`` of the patch grid every method's map is computed on, before it is
    upsampled to the input size (the chance level of a map depends on it:
    :func:`localization.grid_chance`)."""
    gs = getattr(trunk_of(scorer).patch_embed, "grid_size", None)
    if gs is None or len(set(gs)) != 1:
        raise ValueError(f"expected a square patch grid, got {gs!r}")
    return int(gs[0])


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


def _readout(rel: torch.Tensor, n_prefix: int, readout: str | torch.Tensor) -> torch.Tensor:
    """Patch relevance (B, P) from a token-relevance matrix (B, N, N): the CLS row (``"cls"``),
    the mean of the patch rows (``"patches"``), or rows weighted by ``readout`` (B, N)."""
    if isinstance(readout, torch.Tensor):
        rows = torch.einsum("bn,bnm->bm", readout.to(rel.dtype), rel)
    else:
        rows = rel[:, 0] if readout == "cls" else rel[:, n_prefix:].mean(1)
    return rows[:, n_prefix:]


def rollout(attn: Sequence[torch.Tensor], n_prefix: int = 1,
            readout: str = "cls") -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): patch relevance (B, P) from each
    block's attention (B, H, N, N): ``R = prod_b norm((mean_h A_b + I) / 2)``, first
    block rightmost."""
    r = None
    for a in attn:
        a = a.float().mean(1)
        eye = torch.eye(a.shape[-1], device=a.device)
        a = (a + eye) / 2
        a = a / a.sum(-1, keepdim=True)
        r = a if r is None else a @ r
    return _readout(r, n_prefix, readout)


def chefer(attn: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
           n_prefix: int = 1, readout: str | torch.Tensor = "cls") -> torch.Tensor:
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf 2021): patch relevance
    (B, P).

    ``R = I``; for each block ``R <- R + mean_h[(grad_A * A)^+] @ R``; read out on the
    CLS row, or on rows weighted by ``readout`` (B, N) (see :func:`explain_batch`).
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


def layer_positions(scorer: nn.Module) -> list[str]:
    """Names of the layers a CAM method can target, input to output: ``block b`` (the ``norm1``
    input of block ``b``) for every block, then ``final norm`` (the tower's output tokens)."""
    return [f"block {b}" for b in range(len(trunk_of(scorer).blocks))] + ["final norm"]


def default_layer(scorer: nn.Module) -> int:
    """Index (into :func:`layer_positions`) of the CAM target: the last layer whose patch tokens
    reach the score. A CLS-pooled tower reads only the CLS token at its output, so its patch
    tokens last matter at the input of the last block (``block L-1``, pytorch-grad-cam's ViT
    recipe); a model that pools its patch tokens reads them at the ``final norm``."""
    n = len(trunk_of(scorer).blocks)
    return n if getattr(scorer, "readout", "cls") == "patches" else n - 1


def _layer_modules(trunk: nn.Module) -> list[nn.Module]:
    return [b.norm1 for b in trunk.blocks] + [trunk.norm]


def _cam_objects(scorer: nn.Module, layers: list[nn.Module]) -> dict:
    """pytorch-grad-cam objects; only Grad-CAM's keeps its hooks (it runs the pass)."""
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM

    objs = {"gradcam": GradCAM(scorer, layers, reshape_transform=vit_reshape)}
    for name, cls in (("gradcam++", GradCAMPlusPlus), ("layercam", LayerCAM), ("eigencam", EigenCAM)):
        objs[name] = cls(scorer, layers[:1], reshape_transform=vit_reshape)
        objs[name].activations_and_grads.release()
    return objs


def _output_readout(store: dict) -> torch.Tensor:
    """Read-out weights (B, N) over output tokens: the share of each token in the norm of the
    score's gradient at the tower's output (one-hot on CLS for a CLS-pooled tower)."""
    g = store["grad"].float().norm(dim=-1)
    return g / g.sum(-1, keepdim=True).clamp_min(1e-12)


def explain_batch(scorer: nn.Module, x: torch.Tensor, label_idx: Sequence[int],
                  layer: int | None = None, methods: Sequence[str] = ONE_PASS,
                  layers: bool = False) -> dict[str, np.ndarray]:
    """Maps of one batch (B, 3, S, S) for one label per image, by every method of ``methods``
    (all in :data:`ONE_PASS`) from a single forward and backward pass.

    ``layer``: index into :func:`layer_positions` of the CAM methods' target (default:
    :func:`default_layer`). Returns ``{method: (B, S, S)}``; with ``layers``, also
    ``{"gradcam@i": (B, S, S)}`` for every layer position ``i`` (the layer-wise curves).
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    bad = [m for m in methods if m not in ONE_PASS]
    if bad:
        raise ValueError(f"unknown one-pass methods {bad}; valid: {', '.join(ONE_PASS)}")
    trunk = trunk_of(scorer)
    mods = _layer_modules(trunk)
    layer = (default_layer(scorer) if layer is None else layer) % len(mods)
    order = list(range(len(mods))) if layers else [layer]  # forward order: how hooks fill lists
    main = order.index(layer)
    S = x.shape[-1]
    targets = [ClassifierOutputTarget(int(j)) for j in label_idx]
    n_prefix = int(getattr(trunk, "num_prefix_tokens", 1))
    out: dict[str, np.ndarray] = {}
    tokens: dict = {}

    def keep_grad(_module, _inp, o):  # returns None: the output is left as it is
        if o.requires_grad:
            o.register_hook(lambda g: tokens.__setitem__("grad", g.detach()))

    # Gradients with respect to activations only: no weight gradients. When only the target
    # layer's gradient is needed, the graph starts there (the backward pass stops there too).
    cut = not layers and "chefer" not in methods
    flags = [(p, p.requires_grad) for p in scorer.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    handles = []
    if cut:
        handles.append(mods[layer].register_forward_hook(lambda _m, _i, o: o.detach().requires_grad_()))
    else:
        x = x.detach().clone().requires_grad_()
    handles.append(trunk.norm.register_forward_hook(keep_grad))
    objs = _cam_objects(scorer.eval(), [mods[i] for i in order])
    try:
        with attention_capture(trunk) as att, _one_blas_thread():
            objs["gradcam"](input_tensor=x, targets=targets)  # the pass; the maps below
            ag = objs["gradcam"].activations_and_grads
            acts = [a.numpy() for a in ag.activations]
            grads = [g.numpy() for g in ag.gradients]
            for name in [m for m in methods if m in objs]:
                cam = objs[name].get_cam_image(x, None, targets, acts[main], grads[main], False)
                out[name] = scale(cam, S)
            if layers:
                gc = objs["gradcam"]
                for i, a, g in zip(order, acts, grads):
                    out[f"gradcam@{i}"] = scale(gc.get_cam_image(x, None, targets, a, g, False), S)
            if "rollout" in methods:
                readout = getattr(scorer, "readout", "cls")
                out["rollout"] = _grid_maps(rollout([s["attn"] for s in att], n_prefix, readout), S)
            if "chefer" in methods:
                rel = chefer([s["attn"] for s in att], [s["grad"] for s in att], n_prefix,
                             _output_readout(tokens))
                out["chefer"] = _grid_maps(rel, S)
    finally:
        for h in handles:
            h.remove()
        objs["gradcam"].activations_and_grads.release()
        for p, f in flags:
            p.requires_grad_(f)
    return out


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Small numpy linear algebra (EigenCAM's SVD of a (g*g, C) matrix per image) on one BLAS
    thread: many threads on tiny matrices are slower, and much slower on a shared machine."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


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


def scorecam_batch(scorer: nn.Module, x: torch.Tensor, label_idx: Sequence[int],
                   layer: int | None = None, batch_size: int = 128) -> np.ndarray:
    """ScoreCAM maps (B, S, S): one forward per activation channel per image (expensive)."""
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    mods = _layer_modules(trunk_of(scorer))
    layer = default_layer(scorer) if layer is None else layer
    targets = [ClassifierOutputTarget(int(j)) for j in label_idx]
    with _quiet_scorecam(), _one_blas_thread(), \
            ScoreCAM(scorer.eval(), [mods[layer]], reshape_transform=vit_reshape) as cam:
        cam.batch_size = batch_size
        return np.asarray(cam(input_tensor=x, targets=targets), dtype=np.float32)


def iter_maps(scorer: nn.Module, pixels, rows: Sequence[int], label_idx: Sequence[int], mean, std,
              methods: Sequence[str] = ONE_PASS, layer: int | None = None, layers: bool = False,
              batch_size: int = 32, progress: bool = True, desc: str = "maps"
              ) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """Maps of pixel-cache ``rows`` (one label index per row), batch by batch.

    Yields ``(slice into rows, {method: (b, S, S)})``; ``scorecam`` in ``methods`` runs it too.
    ``layer``: the CAM target (index into :func:`layer_positions`; default :func:`default_layer`).
    """


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
        maps = {}
        if one or layers:
            maps = explain_batch(scorer, x, label_idx[sl], layer, one or ("gradcam",), layers)
        if "scorecam" in methods:
            maps["scorecam"] = scorecam_batch(scorer, x, label_idx[sl], layer)
        yield sl, maps


def compute_maps(scorer: nn.Module, pixels, rows: Sequence[int], label_idx: Sequence[int], mean, std,
                 method: str = "gradcam", layer: int | None = None, batch_size: int = 32,
                 progress: bool = True) -> np.ndarray:
    """Maps (n, S, S) in [0, 1] of one method for pixel-cache ``rows``, one label index per row."""
    S = pixels.pixels.shape[-1]
    parts = [m[method] for _, m in iter_maps(scorer, pixels, rows, label_idx, mean, std, (method,),
                                              layer, False, batch_size, progress, method)]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, S, S), np.float32)
