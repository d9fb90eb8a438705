"""Zero-shot multi-label classification with a CLIP model: prompts, scores, probability modes.

Two approaches, both on L2-normalised embeddings, cosine similarity ``c = <u, v>`` and the
model's temperature ``tau = exp(logit_scale)``:

* **single prompt per label** (the original study): ``z_ij = tau * c(image_i, prompt_j)``, turned
  into probabilities by one of :data:`PROB_MODES`: ``sigmoid`` (``sigma(z_ij)``), ``softmax``
  (over the labels of image ``i``) or ``minmax`` (row-wise min-max scaling of ``z_i``);
* **paired prompts** (CheXzero): for each label a positive prompt ("cardiomegaly") and a
  negative one ("no cardiomegaly"); ``p_ij = exp(z+) / (exp(z+) + exp(z-))``. Each side may be
  a prompt *ensemble*: the mean of several templates' normalised embeddings, renormalised.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from helpers.protocols.embeddings import l2_normalize
from helpers.data.labels import CHEXPERT_LABELS
from helpers.analysis.metrics import per_label_auroc, tune_thresholds

PROB_MODES = ("sigmoid", "softmax", "minmax")
SINGLE_PROMPT = "single prompt ({mode})"
"""Name of the original study's one-prompt-per-label classifier under a probability mode, among the
candidates chapter 2 selects from (and chapter 6 explains)."""

# Per label: phrases naming the finding (used by every template).
NAMES: dict[str, list[str]] = {
    "Enlarged Cardiomediastinum": ["enlarged cardiomediastinum", "widened mediastinum"],
    "Cardiomegaly": ["cardiomegaly", "enlarged heart"],
    "Lung Opacity": ["lung opacity", "airspace opacity"],
    "Lung Lesion": ["lung lesion", "pulmonary nodule"],
    "Edema": ["pulmonary edema", "edema"],
    "Consolidation": ["consolidation", "airspace consolidation"],
    "Pneumonia": ["pneumonia", "infectious process"],
    "Atelectasis": ["atelectasis", "atelectatic change"],
    "Pneumothorax": ["pneumothorax", "apical pneumothorax"],
    "Pleural Effusion": ["pleural effusion", "pleural fluid"],
    "Pleural Other": ["pleural thickening", "pleural plaque"],
    "Fracture": ["fracture", "rib fracture"],
    "Support Devices": ["support devices", "lines and tubes"],
}
NO_FINDING_POS = ["no acute cardiopulmonary abnormality", "normal chest radiograph"]
NO_FINDING_NEG = ["acute cardiopulmonary abnormality", "abnormal chest radiograph"]

TEMPLATES: dict[str, tuple[str, str]] = {
    # name: (positive template, negative template)
    "bare": ("{x}", "no {x}"),
    "sentence": ("there is {x}.", "there is no {x}."),
    "xray": ("a chest x-ray showing {x}", "a chest x-ray showing no {x}"),
}


def prompts(label: str, template: str = "bare", ensemble: bool = False) -> tuple[list[str], list[str]]:
    """Positive and negative prompts of one label for a template (one name, or all names)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; valid: {', '.join(TEMPLATES)}")
    if label == "No Finding":
        pos, neg = NO_FINDING_POS, NO_FINDING_NEG
        return (pos if ensemble else pos[:1]), (neg if ensemble else neg[:1])
    tp, tn = TEMPLATES[template]
    names = NAMES[label] if ensemble else NAMES[label][:1]
    return [tp.format(x=n) for n in names], [tn.format(x=n) for n in names]


def ensemble_embedding(text_emb: np.ndarray) -> np.ndarray:
    """Mean of L2-normalised prompt embeddings (m, d), renormalised: (d,)."""
    return l2_normalize(l2_normalize(text_emb).mean(0))


def cosines(img: np.ndarray, txt: np.ndarray) -> np.ndarray:
    """Cosine similarities (n, k) of images (n, d) and one text per label (k, d)."""
    return l2_normalize(img) @ l2_normalize(txt).T


def single_prompt_scores(img: np.ndarray, txt: np.ndarray, logit_scale: float, mode: str) -> np.ndarray:
    """Seed-style probabilities (n, k) from image (n, d) and one prompt per label (k, d)."""
    if mode not in PROB_MODES:
        raise ValueError(f"unknown probability mode {mode!r}; valid: {', '.join(PROB_MODES)}")
    z = logit_scale * cosines(img, txt)
    if mode == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if mode == "softmax":
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    lo, hi = z.min(1, keepdims=True), z.max(1, keepdims=True)
    return (z - lo) / np.maximum(hi - lo, 1e-12)


def paired_scores(img: np.ndarray, pos: np.ndarray, neg: np.ndarray,
                  logit_scale: float) -> np.ndarray:
    """CheXzero probabilities (n, k): softmax over each label's (positive, negative)
    prompt pair.

    ``pos`` and ``neg`` are (k, d) (one embedding per label, ensembles already
    averaged).
    """
    u = l2_normalize(img)
    zp = logit_scale * u @ l2_normalize(pos).T
    zn = logit_scale * u @ l2_normalize(neg).T
    return 1 / (1 + np.exp(-(zp - zn)))


def select_on_val(candidates: dict[str, np.ndarray], y: np.ndarray, val_rows: np.ndarray) -> tuple[str, np.ndarray]:
    """Pick the candidate score matrix with the best validation macro AUROC; tune its thresholds.

    Parameters
    ----------
    candidates : name -> scores (N, k) over all rows.
    y : (N, k) targets; only ``y[val_rows]`` is read.
    val_rows : indices of the validation rows.

    Returns (best name, per-label thresholds (k,) maximising validation F1). Test labels are
    never read, so shuffling them cannot change the result.
    """

    yv = y[val_rows]
    best = max(candidates, key=lambda n: np.nanmean(per_label_auroc(yv, candidates[n][val_rows])))
    return best, tune_thresholds(yv, candidates[best][val_rows])


def candidate_scores(img: np.ndarray, embed_texts, logit_scale: float,
                     labels: Sequence[str] = CHEXPERT_LABELS) -> dict[str, np.ndarray]:
    """Paired-prompt scores (N, k) for every template, single prompt and ensemble.

    ``embed_texts`` maps a list of prompts to their embeddings (m, d).
    """
    out = {}
    for template in TEMPLATES:
        for ens in (False, True):
            pos, neg = zip(*(prompts(c, template, ens) for c in labels))
            P = np.stack([ensemble_embedding(embed_texts(p)) for p in pos])
            N = np.stack([ensemble_embedding(embed_texts(n)) for n in neg])
            out[f"{template}{'+ensemble' if ens else ''}"] = paired_scores(img, P, N, logit_scale)
    return out


def single_prompt_texts(template: str = "bare", labels: Sequence[str] = CHEXPERT_LABELS) -> list[str]:
    """The original study's one prompt per label (the positive prompt of ``template``)."""
    return [prompts(c, template)[0][0] for c in labels]
