"""Saliency maps for the ViT image tower and their validation against ground-truth regions.

Maps come from pytorch-grad-cam (Grad-CAM, Grad-CAM++) on a transformer block of the timm ViT
(``visual.trunk.blocks[b].norm1``; its tokens are reshaped to a ``g x g`` grid, dropping the CLS
token), with respect to one label's score. The score is a differentiable function of the image
embedding, so the same code explains all three settings:

* zero-shot: the paired-prompt decision, cosine similarity with the label's positive prompt
  minus that with its negative prompt (or the positive similarity alone);
* linear probe: the probe's logit (:meth:`probe.Probe.torch_logits`) through the frozen encoder;
* fine-tuned: the fine-tuned model's label logit.

Localisation metrics, CheXlocalize-style, per (image, label) pair with map ``M`` (values in
[0, 1], the input's size) and ground-truth region ``G`` (bool):

* pointing game: 1 if ``argmax M`` lies inside ``G``;
* IoU: ``|{M >= t} & G| / |{M >= t} | G|`` for a threshold ``t`` chosen on validation pairs;
* hit: ``IoU >= hit_iou`` (0.1 by default, the lenient end of the IoU thresholds of ChestX-ray8).
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

METHODS = ("gradcam", "gradcam++")


def vit_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """ViT tokens (B, 1 + g*g, C) -> activation grid (B, C, g, g), dropping the CLS token."""
    n = tokens.shape[1] - 1
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ValueError(f"cannot reshape {n} patch tokens into a square grid (expected 1 CLS + g*g tokens)")
    return tokens[:, 1:, :].reshape(tokens.shape[0], g, g, tokens.shape[2]).permute(0, 3, 1, 2)


class EmbeddingScorer(nn.Module):
    """Image tower + a head on its embedding: images (B, 3, S, S) -> label scores (B, k)."""

    def __init__(self, visual: nn.Module, head: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


def zero_shot_head(pos_emb: np.ndarray, neg_emb: np.ndarray | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Zero-shot score as a function of the image embedding (B, d) -> (B, k).

    With ``neg_emb``: the paired-prompt decision ``cos(e, v+) - cos(e, v-)`` (chapter 2's rule, up
    to the temperature); without: the cosine similarity with the positive prompt alone.
    ``pos_emb``, ``neg_emb``: (k, d) text embeddings, one per label.
    """
    p = nn.functional.normalize(torch.as_tensor(pos_emb, dtype=torch.float32), dim=-1)
    d = p if neg_emb is None else p - nn.functional.normalize(torch.as_tensor(neg_emb, dtype=torch.float32), dim=-1)
    return lambda e: nn.functional.normalize(e, dim=-1) @ d.to(e.device, e.dtype).T


def finetuned_head(scorer) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fine-tuned :class:`finetune.LabelScorer`'s logit as a function of the image embedding
    (the text directions computed once: only the image side is explained)."""
    directions = None
    if scorer.head is None:
        with torch.no_grad():
            directions = scorer.text_directions().float()
    return lambda e: scorer.embedding_logits(e, directions)


def randomized_copy(visual: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of the image tower with every weight re-drawn (Adebayo et al.'s model randomisation).

    Matrices get N(0, 0.02), LayerNorm weights 1, biases 0: the architecture of the original with
    none of what it learned.
    """
    rnd = copy.deepcopy(visual)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in rnd.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    return rnd


def compute_maps(scorer: EmbeddingScorer, pixels, rows: Sequence[int], label_idx: Sequence[int],
                 mean, std, block: int = -1, method: str = "gradcam", batch_size: int = 32,
                 progress: bool = True) -> np.ndarray:
    """Saliency maps (n, S, S) in [0, 1] for pixel-cache ``rows`` and one label index per row.

    ``block`` picks the transformer block whose ``norm1`` is the target layer.
    """
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from tqdm.auto import tqdm

    from .images import to_model_input

    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; valid: {', '.join(METHODS)}")
    rows, label_idx = np.asarray(rows), np.asarray(label_idx)
    if len(rows) != len(label_idx):
        raise ValueError(f"rows ({len(rows)}) and label_idx ({len(label_idx)}) differ in length")
    scorer = scorer.eval()
    dev = next(scorer.parameters()).device
    layer = scorer.visual.trunk.blocks[block].norm1
    cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    out = []
    with cls(model=scorer, target_layers=[layer], reshape_transform=vit_reshape) as cam:
        for i in tqdm(range(0, len(rows), batch_size), desc=f"{method} maps", disable=not progress):
            r = rows[i:i + batch_size]
            x = to_model_input(np.asarray(pixels.pixels[r]), mean, std).to(dev)
            out.append(cam(input_tensor=x, targets=[ClassifierOutputTarget(int(j)) for j in label_idx[i:i + batch_size]]))
    if not out:
        S = pixels.pixels.shape[-1]
        return np.zeros((0, S, S), np.float32)
    return np.concatenate(out).astype(np.float32)


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
    at the model's input geometry (:func:`to_input_geometry`)."""
    import cv2

    from .phantoms import mask_of

    out = np.zeros((len(mask_paths), size, size), bool)
    for i, (p, lab) in enumerate(zip(mask_paths, labels)):
        bits = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if bits is None:
            raise FileNotFoundError(f"cannot read mask {p}: expected a 16-bit PNG bitmask written by helpers.phantoms")
        out[i] = to_input_geometry(mask_of(bits, lab), size)
    return out


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """1.0 where the map's maximum (first, in row-major order) lies inside the mask: (n,)."""
    n = len(maps)
    flat = maps.reshape(n, -1).argmax(1)
    return masks.reshape(n, -1)[np.arange(n), flat].astype(float)


def iou(maps: np.ndarray, masks: np.ndarray, threshold: float) -> np.ndarray:
    """IoU (n,) of ``maps >= threshold`` with the masks (0 where both are empty)."""
    b = maps >= threshold
    inter = (b & masks).sum((1, 2))
    union = (b | masks).sum((1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def choose_threshold(maps: np.ndarray, masks: np.ndarray,
                     grid: Sequence[float] = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))) -> float:
    """The map threshold with the best mean IoU on these (validation) pairs."""
    if len(maps) == 0:
        import warnings

        warnings.warn("no validation pairs to choose the map threshold on: using 0.5")
        return 0.5
    scores = [iou(maps, masks, t).mean() for t in grid]
    return float(grid[int(np.argmax(scores))])


def localization(maps: np.ndarray, masks: np.ndarray, threshold: float, groups: Sequence,
                 n_boot: int = 200, hit_iou: float = 0.1, seed: int = 0) -> dict:
    """Pointing game, mean IoU and hit rate with report-level bootstrap 95% CIs.

    Returns ``{metric: value, metric_ci: [lo, hi], "per_pair": {...}}`` for pointing, iou, hit.
    """
    from .metrics import bootstrap_stat

    per = {"pointing": pointing_game(maps, masks), "iou": iou(maps, masks, threshold)}
    per["hit"] = (per["iou"] >= hit_iou).astype(float)
    out: dict = {"threshold": threshold, "n_pairs": int(len(maps))}
    for k, v in per.items():
        val, lo, hi = bootstrap_stat(lambda idx, v=v: float(v[idx].mean()), groups, n_boot, seed)
        out[k], out[f"{k}_ci"] = val, [lo, hi]
    out["per_pair"] = per
    return out


def location_prior(train, val, test, n_boot: int = 200) -> dict | None:
    """The reference a map must beat: per label, the mean of its training regions (scaled to
    [0, 1]), the same map for every image. Threshold chosen on ``val``, scored on ``test``
    (:class:`study.LocPairs` each). ``None`` when there are no training regions (``full``)."""
    if len(train) == 0:
        return None
    prior = {c: train.masks[(train.table.label == c).to_numpy()].mean(0) for c in train.table.label.unique()}
    prior = {c: m / m.max() if m.max() > 0 else m for c, m in prior.items()}
    S = train.masks.shape[-1]

    def maps(p):
        return np.stack([prior.get(c, np.zeros((S, S))) for c in p.table.label]) if len(p) else np.zeros((0, S, S))

    t = choose_threshold(maps(val), val.masks)
    return localization(maps(test), test.masks, t, test.table.report_id, n_boot)
