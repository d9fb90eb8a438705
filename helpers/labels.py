"""CheXpert-14 labels for IU-Xray reports: a rule-based text labeler and a MeSH mapping.

Two independent label schemes for the same 14 CheXpert observations:

* :class:`ReportLabeler` reads the report text (FINDINGS + IMPRESSION). It is a spaCy 3.8
  pipeline built from ``spacy.blank("en")`` (no model download): a sentencizer, an
  ``entity_ruler`` holding mention patterns per observation, and two NegEx components from
  ``negspacy``: one for negation (the ``en_clinical`` termset, adapted) and one, with its own
  termset, for uncertainty ("cannot exclude", "may represent", "possible").
* :func:`mesh_labels` maps the human-coded MeSH terms shipped with each report.

Mention-level rule (as in the CheXpert labeler): an uncertain mention is uncertain even
when a negation cue is also in scope ("cannot exclude pneumonia"); otherwise a negated
mention is negative; otherwise positive. Report-level aggregation per observation:
any positive -> 1, else any uncertain -> -1 (``UNCERTAIN``), else any negative -> 0,
else not mentioned (``NOT_MENTIONED``, NaN). ``No Finding`` follows CheXpert's rule: it is
1 when none of the 12 pathologies (all but Support Devices and No Finding) is positive
or uncertain, else 0.

The uncertainty policy turns the three-valued labels into the binary targets used by the
study (see :func:`binarize`): ``"positive"`` (U-Ones, the default) or ``"negative"`` (U-Zeros).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

CHEXPERT_LABELS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
"""The 14 CheXpert observations, in CheXpert's order."""

PATHOLOGIES: tuple[str, ...] = tuple(
    x for x in CHEXPERT_LABELS if x not in ("Support Devices", "No Finding")
)
"""The 12 observations that decide No Finding."""

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
NOT_MENTIONED = float("nan")
UNCERTAIN_POLICIES: tuple[str, ...] = ("positive", "negative")
"""Accepted values of ``uncertain_policy``: U-Ones (``positive``) or U-Zeros (``negative``)."""

# --------------------------------------------------------------------------------------
# Mention patterns. Plain strings are matched case-insensitively as phrases; lists are
# spaCy token patterns. The entity ruler keeps the longest match, so the ``_OTHER``
# entries shadow phrases that contain a mention word but are not that observation.
# --------------------------------------------------------------------------------------
_BE = ["is", "are", "appears", "appear", "remains", "remain", "again", "now", "still", "stably",
       "mildly", "moderately", "markedly", "severely", "slightly", "minimally", "somewhat",
       "borderline", "be", "been", "has", "have", "become", "is", "stable", "and", "size"]
_ENLARGED = ["enlarged", "enlargement", "increased", "large", "prominent", "widened", "widening",
             "wide"]


def _adj_pattern(heads: Sequence[str], subs: Sequence[str], adjs: Sequence[str]) -> list[dict]:
    """Token pattern ``(the)? HEAD SUB? (BE-like word)* ADJ``, e.g. "heart size is enlarged"."""
    return [
        {"LOWER": "the", "OP": "?"},
        {"LOWER": {"IN": list(heads)}},
        {"LOWER": {"IN": list(subs)}, "OP": "?"},
        {"LOWER": {"IN": _BE}, "OP": "*"},
        {"LOWER": {"IN": list(adjs)}},
    ]


MENTIONS: dict[str, list] = {
    "Enlarged Cardiomediastinum": [
        "widened mediastinum", "mediastinal widening", "mediastinal enlargement",
        "enlarged mediastinum", "enlarged cardiomediastinum", "cardiomediastinal enlargement",
        "enlarged cardiomediastinal silhouette", "enlargement of the cardiomediastinal silhouette",
        "prominent mediastinum", "mediastinal prominence", "widening of the mediastinum",
        "prominent cardiomediastinal silhouette", "widened cardiomediastinal silhouette",
        _adj_pattern(["mediastinum", "mediastinal", "cardiomediastinal"],
                     ["silhouette", "contour", "contours", "shadow", "width"], _ENLARGED),
    ],
    "Cardiomegaly": [
        "cardiomegaly", "cardiac enlargement", "enlarged heart", "enlarged cardiac silhouette",
        "enlargement of the cardiac silhouette", "enlargement of the heart", "heart enlargement",
        "enlarged cardiac shadow", "large heart", "cardiac silhouette enlargement",
        _adj_pattern(["heart", "cardiac"], ["size", "silhouette", "shadow", "contour"],
                     ["enlarged", "enlargement", "increased", "large", "prominent"]),
    ],
    "Lung Opacity": [
        "opacity", "opacities", "opacification", "opacifications", "density", "densities",
        "infiltrate", "infiltrates", "infiltration", "airspace disease", "air space disease",
        "airspace process", "haziness", "hazy", "interstitial disease", "reticular markings",
        "increased interstitial markings", "interstitial prominence", "interstitial markings are increased",
        "airspace opacities", "airspace opacity", "ground-glass", "ground glass",
    ],
    "Lung Lesion": [
        "nodule", "nodules", "nodular density", "nodular opacity", "nodular opacities", "mass",
        "masses", "lesion", "lesions", "tumor", "tumors", "neoplasm", "carcinoma", "metastasis",
        "metastases", "metastatic disease", "cavitary lesion",
    ],
    "Edema": [
        "edema", "pulmonary edema", "interstitial edema", "vascular congestion",
        "pulmonary vascular congestion", "pulmonary congestion", "congestion",
        "congestive heart failure", "heart failure", "chf", "fluid overload",
        "cephalization", "kerley b lines",
    ],
    "Consolidation": [
        "consolidation", "consolidations", "consolidative", "consolidated",
        "consolidative opacity", "consolidative opacities",
    ],
    "Pneumonia": [
        "pneumonia", "pneumonias", "bronchopneumonia", "pneumonitis", "infection",
        "infectious process", "infectious infiltrate", "infectious infiltrates",
    ],
    "Atelectasis": [
        "atelectasis", "atelectases", "atelectatic", "collapse", "collapsed", "volume loss",
        "atelectatic changes",
    ],
    "Pneumothorax": [
        "pneumothorax", "pneumothoraces", "hydropneumothorax", "pneumothoraxes",
    ],
    "Pleural Effusion": [
        "pleural effusion", "pleural effusions", "effusion", "effusions", "pleural fluid",
        "hydrothorax", "hemothorax", "blunting of the costophrenic angle",
        "blunting of the costophrenic angles", "blunting of the right costophrenic angle",
        "blunting of the left costophrenic angle", "blunted costophrenic angle",
        "blunted costophrenic angles", "costophrenic angle blunting", "costophrenic blunting",
        "hydropneumothorax",
        [{"LOWER": "costophrenic"}, {"LOWER": {"IN": ["angle", "angles", "sulcus", "sulci"]}},
         {"LOWER": {"IN": _BE}, "OP": "*"}, {"LOWER": {"IN": ["blunted", "blunting"]}}],
    ],
    "Pleural Other": [
        "pleural thickening", "thickening of the pleura", "pleural plaque", "pleural plaques",
        "fibrothorax", "pleural scarring", "pleural scar", "pleural calcification",
        "pleural calcifications", "pleural-parenchymal scarring", "pleuroparenchymal scarring",
        "apical pleural thickening", "pleural thickenings",
    ],
    "Fracture": [
        "fracture", "fractures", "fractured", "fracture deformity", "fracture deformities",
    ],
    "Support Devices": [
        "pacemaker", "pacer", "aicd", "icd", "defibrillator", "catheter", "catheters", "picc",
        "picc line", "central line", "central venous catheter", "port-a-cath", "porta cath",
        "port catheter", "endotracheal tube", "et tube", "nasogastric tube", "ng tube",
        "feeding tube", "enteric tube", "chest tube", "chest tubes", "tracheostomy",
        "sternotomy wires", "sternotomy wire", "median sternotomy", "sternotomy",
        "surgical clips", "clips", "stent", "stents", "prosthetic valve", "valve replacement",
        "hardware", "fixation hardware", "support devices", "monitoring leads", "leads",
        "swan-ganz", "dobhoff", "drain",
    ],
}
_OTHER: list[str] = [
    "pericardial effusion", "joint effusion", "lymph node enlargement", "thyroid enlargement",
    "calcified granuloma", "calcified granulomas", "granulomatous disease", "lytic lesion",
    "bony lesion", "bone lesion", "osseous lesion", "soft tissue mass", "breast mass",
    "hilar mass", "no acute osseous", "nipple shadow", "nipple shadows",
]

# --------------------------------------------------------------------------------------
# Negation and uncertainty termsets (NegEx trigger lists).
# --------------------------------------------------------------------------------------
_UNCERTAIN_PRECEDING = [
    "possible", "possibly", "probable", "probably", "may represent", "may reflect", "may be",
    "may indicate", "might be", "might represent", "could be", "could represent",
    "cannot exclude", "can not exclude", "cannot rule out", "can not rule out", "can't exclude",
    "cannot be excluded", "suspicious for", "suspicion of", "suspicion for", "suspected",
    "suggestive of", "suggesting", "suggest", "suggests", "question of", "questionable",
    "concerning for", "concern for", "likely", "presumably", "presumed", "borderline",
    "equivocal", "versus", "vs", "differential diagnosis", "consider", "indeterminate",
    "uncertain", "not excluded",
]
_UNCERTAIN_FOLLOWING = [
    "cannot be excluded", "can not be excluded", "not excluded", "not be excluded",
    "is not excluded", "are not excluded", "not ruled out", "is possible", "are possible",
    "is suspected", "are suspected", "is questioned", "not entirely excluded", "versus", "vs",
    "is not entirely excluded", "is likely", "is probable", "could be present",
]
_UNCERTAIN_INSIDE = {"borderline", "possible", "possibly", "questionable", "equivocal", "probable"}
_TERMINATION_EXTRA = ["there is", "there are", "and there", "otherwise", "no", "without",
                      "negative for", "clear", "is normal", "are normal"]


def _negation_termset() -> dict[str, list[str]]:
    """The negspacy ``en_clinical`` termset, adapted to radiology reports.

    Hedging words ("cannot", "versus") are moved to the uncertainty termset, and common
    report phrasings for absence are added ("is not seen", "has resolved", "clear of").
    """
    from negspacy.termsets import termset

    ts = termset("en_clinical").get_patterns()
    ts = {k: list(v) for k, v in ts.items()}
    ts["preceding_negations"] = [
        t for t in ts["preceding_negations"] if t not in ("cannot", "versus", "can't", "cant", "ro")
    ] + ["clear of", "resolution of", "resolved", "without evidence of", "no definite",
         "no focal", "no acute", "no new", "no visible", "no radiographic evidence of",
         "no findings of", "removal of", "interval removal of", "normal", "no large",
         "no significant", "no obvious", "no gross", "no displaced", "no visualized"]
    ts["following_negations"] = ts["following_negations"] + [
        "is not seen", "are not seen", "not identified", "is not identified", "are absent",
        "is absent", "has resolved", "have resolved", "resolved", "not present", "is not present",
        "are not present", "not visualized", "is not visualized", "has been removed",
        "have been removed", "removed", "not evident", "is not evident", "not appreciated",
        "is not appreciated", "are not appreciated",
    ]
    ts["pseudo_negations"] = ts["pseudo_negations"] + [
        "cannot exclude", "can not exclude", "not excluded", "not be excluded", "cannot rule out",
        "no interval change in", "no change in", "not significantly changed",
    ]
    ts["termination"] = ts["termination"] + ["there is", "there are", "and there", "otherwise"]
    return ts


def _uncertainty_termset() -> dict[str, list[str]]:
    """A NegEx-style termset whose "negations" are hedges ("may represent", "cannot exclude")."""
    from negspacy.termsets import termset

    base = termset("en_clinical").get_patterns()
    return {
        "pseudo_negations": ["no increase", "not likely", "unlikely"],
        "preceding_negations": list(_UNCERTAIN_PRECEDING),
        "following_negations": list(_UNCERTAIN_FOLLOWING),
        "termination": list(base["termination"]) + _TERMINATION_EXTRA,
    }


@dataclass(frozen=True)
class Mention:
    """One observation mention in a report: its label, character span and status."""

    label: str
    text: str
    start_char: int
    end_char: int
    status: float  # POSITIVE, NEGATIVE or UNCERTAIN


class ReportLabeler:
    """Rule-based CheXpert-14 labeler (spaCy blank English + entity ruler + NegEx)."""

    VERSION = "1"

    @cached_property
    def nlp(self):
        """The spaCy pipeline, built on first use (no model download)."""
        import spacy
        from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)

        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"})
        patterns = []
        for label, items in MENTIONS.items():
            patterns += [{"label": label, "pattern": p} for p in items]
        patterns += [{"label": "_OTHER", "pattern": p} for p in _OTHER]
        ruler.add_patterns(patterns)
        labels = list(MENTIONS)
        nlp.add_pipe("negex", name="negation",
                     config={"neg_termset": _negation_termset(), "ent_types": labels,
                             "extension_name": "negex"})
        nlp.add_pipe("negex", name="uncertainty",
                     config={"neg_termset": _uncertainty_termset(), "ent_types": labels,
                             "extension_name": "uncertain"})
        return nlp

    def mentions(self, text: str) -> list[Mention]:
        """All observation mentions in ``text`` with their status."""
        return self._mentions(self.nlp(text or ""))

    @staticmethod
    def _mentions(doc) -> list[Mention]:
        out = []
        for ent in doc.ents:
            if ent.label_ == "_OTHER":
                continue
            inside = {t.lower_ for t in ent} & _UNCERTAIN_INSIDE
            if ent._.uncertain or inside:
                status = UNCERTAIN
            elif ent._.negex:
                status = NEGATIVE
            else:
                status = POSITIVE
            out.append(Mention(ent.label_, ent.text, ent.start_char, ent.end_char, status))
        return out

    def label(self, text: str) -> dict[str, float]:
        """Three-valued labels of one report: 1, 0, -1 (uncertain) or NaN (not mentioned)."""
        return aggregate(self.mentions(text))

    def label_many(self, texts: Iterable[str], batch_size: int = 256) -> pd.DataFrame:
        """Three-valued labels, one row per text, columns :data:`CHEXPERT_LABELS`."""
        rows = [aggregate(self._mentions(doc))
                for doc in self.nlp.pipe((t or "" for t in texts), batch_size=batch_size)]
        return pd.DataFrame(rows, columns=list(CHEXPERT_LABELS))

    @staticmethod
    def fingerprint() -> str:
        """Hash of this module's source: changes whenever the rules change (cache key)."""
        return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def aggregate(mentions: Sequence[Mention]) -> dict[str, float]:
    """Report-level three-valued labels from mention statuses, with CheXpert's No Finding rule."""
    out: dict[str, float] = {}
    for label in CHEXPERT_LABELS[:-1]:
        st = [m.status for m in mentions if m.label == label]
        if POSITIVE in st:
            out[label] = POSITIVE
        elif UNCERTAIN in st:
            out[label] = UNCERTAIN
        elif NEGATIVE in st:
            out[label] = NEGATIVE
        else:
            out[label] = NOT_MENTIONED
    found = any(out[p] in (POSITIVE, UNCERTAIN) for p in PATHOLOGIES)
    out["No Finding"] = NEGATIVE if found else POSITIVE
    return out


def binarize(labels: pd.DataFrame, uncertain_policy: str = "positive") -> pd.DataFrame:
    """Binary 0/1 targets from three-valued labels.

    Parameters
    ----------
    labels : DataFrame (n, k) with values in {1, 0, -1, NaN}.
    uncertain_policy : ``"positive"`` maps -1 to 1 (U-Ones); ``"negative"`` maps it to 0 (U-Zeros).
    Not-mentioned (NaN) is always 0.
    """
    if uncertain_policy not in UNCERTAIN_POLICIES:
        raise ValueError(
            f"uncertain_policy={uncertain_policy!r} is not valid; expected one of {UNCERTAIN_POLICIES}")
    u = 1 if uncertain_policy == "positive" else 0
    return labels.replace({UNCERTAIN: u}).fillna(0).astype(np.int8)


# --------------------------------------------------------------------------------------
# MeSH scheme: the human-coded MeSH terms of each report, mapped to the same 14 labels.
# A MeSH term is "Heading/sub/sub..."; a rule matches the heading and, where given, needs
# one of the listed words among the subheadings.
# --------------------------------------------------------------------------------------
MESH_RULES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "Enlarged Cardiomediastinum": [("mediastinum", ("enlarged", "prominent", "widened"))],
    "Cardiomegaly": [("cardiomegaly", ()), ("cardiac shadow", ("enlarged",)),
                     ("heart", ("enlarged",))],
    "Lung Opacity": [("opacity", ()), ("density", ("lung",)), ("airspace disease", ()),
                     ("infiltrate", ())],
    "Lung Lesion": [("nodule", ()), ("mass", ()), ("lung neoplasms", ()), ("cysts", ("lung",))],
    "Edema": [("pulmonary edema", ()), ("pulmonary congestion", ()), ("heart failure", ()),
              ("edema", ())],
    "Consolidation": [("consolidation", ())],
    "Pneumonia": [("pneumonia", ())],
    "Atelectasis": [("pulmonary atelectasis", ()), ("volume loss", ("lung",))],
    "Pneumothorax": [("pneumothorax", ()), ("hydropneumothorax", ()), ("hemopneumothorax", ())],
    "Pleural Effusion": [("pleural effusion", ()), ("costophrenic angle", ("blunted",)),
                         ("hydropneumothorax", ()), ("hemothorax", ()), ("hemopneumothorax", ())],
    "Pleural Other": [("thickening", ("pleura",)), ("pleura", ("thickening",))],
    "Fracture": [("fractures, bone", ())],
    "Support Devices": [("catheters, indwelling", ()), ("implanted medical device", ()),
                        ("surgical instruments", ()), ("medical device", ()),
                        ("tube, inserted", ()), ("stents", ()), ("pacemaker, artificial", ())],
}


def mesh_labels(terms: Sequence[str]) -> dict[str, int]:
    """Binary CheXpert-14 labels from a report's MeSH terms (``major`` terms, "Heading/sub/...").

    "normal" and "no indexing" map to nothing; No Finding follows the same rule as the
    text labeler (no positive pathology).
    """
    parsed = []
    for t in terms:
        parts = [p.strip().lower() for p in t.split("/")]
        parsed.append((parts[0], set(parts[1:])))
    out = {}
    for label, rules in MESH_RULES.items():
        out[label] = int(any(h == head and (not need or need & subs)
                             for head, subs in parsed for h, need in
                             ((r[0], set(r[1])) for r in rules)))
    out["No Finding"] = int(not any(out[p] for p in PATHOLOGIES))
    return out


def agreement(text: pd.DataFrame, mesh: pd.DataFrame,
              label_names: Sequence[str] = CHEXPERT_LABELS) -> pd.DataFrame:
    """Per-label agreement of two binary label schemes over the same reports.

    Parameters
    ----------
    text, mesh : (n_reports, k) 0/1 frames with columns ``label_names`` (same row order).

    Returns
    -------
    One row per label: prevalence in each scheme (fraction of reports), Cohen's kappa, and
    F1 / precision / recall of the text labels taking the MeSH labels as the reference.
    """
    from sklearn.metrics import cohen_kappa_score, f1_score, precision_score, recall_score

    rows = []
    for c in label_names:
        a, b = text[c].to_numpy(int), mesh[c].to_numpy(int)
        both_const = a.min() == a.max() == b.min() == b.max()
        rows.append({
            "label": c,
            "prevalence (text)": a.mean(),
            "prevalence (MeSH)": b.mean(),
            "kappa": 1.0 if both_const else cohen_kappa_score(a, b),
            "F1": f1_score(b, a, zero_division=0),
            "precision": precision_score(b, a, zero_division=0),
            "recall": recall_score(b, a, zero_division=0),
        })
    return pd.DataFrame(rows).set_index("label")


_STATUS_STYLE = {POSITIVE: ("#1b7837", "positive"), NEGATIVE: ("#888888", "negated"),
                 UNCERTAIN: ("#d95f02", "uncertain")}


def mentions_html(text: str, mentions: Sequence[Mention]) -> str:
    """HTML of ``text`` with each mention highlighted by status and titled with its label."""
    import html

    out, pos = [], 0
    for m in sorted(mentions, key=lambda m: m.start_char):
        if m.start_char < pos:
            continue
        color, word = _STATUS_STYLE[m.status]
        deco = "line-through" if m.status == NEGATIVE else "none"
        out.append(html.escape(text[pos:m.start_char]))
        out.append(f'<span title="{html.escape(m.label)}: {word}" style="background:{color}22;'
                   f'border-bottom:2px solid {color};text-decoration:{deco}">'
                   f'{html.escape(text[m.start_char:m.end_char])}'
                   f'<sub style="color:{color}">{html.escape(m.label)}</sub></span>')
        pos = m.end_char
    out.append(html.escape(text[pos:]))
    return "".join(out)
