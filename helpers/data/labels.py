"""CheXpert-14 labels for IU-Xray reports: a rule-based text labeler and a MeSH mapping.

Two independent label schemes for the same 14 CheXpert observations:

* :class:`ReportLabeler` reads the report text (FINDINGS + IMPRESSION). It is a spaCy 3.8
  pipeline built from ``spacy.blank("en")`` (no model download): a sentencizer, an
  ``entity_ruler`` holding the CheXpert labeler's mention phrases (and its list of *other
  findings* that rule out No Finding), and three NegEx passes from ``negspacy`` that mirror
  CheXpert's three rule files: pre-negation uncertainty ("cannot exclude", "no new"),
  negation ("no", "without", "resolved") and post-negation uncertainty ("may", "possible",
  "versus"), plus CheXpert's "X or Y" rule. The rules themselves are data, in
  :mod:`helpers.data.label_rules`, with the places where they still differ from CheXpert's.
* :func:`mesh_labels` maps the human-coded MeSH terms shipped with each report, with the same
  definitions (scarring is a Lung Opacity; emphysema or degenerative changes rule out No
  Finding).

Mention-level rule (CheXpert's order): pre-negation hedge -> uncertain; else negation ->
negative; else post-negation hedge, "or" coordination or a hedged phrase -> uncertain; else
positive. Report-level aggregation per observation: any positive -> 1, else any uncertain ->
-1 (``UNCERTAIN``), else any negative -> 0, else not mentioned (``NOT_MENTIONED``, NaN).
``No Finding`` follows CheXpert's rule: it is 1 unless some mention other than Support
Devices (one of the 12 pathologies or an *other finding*) is positive or uncertain.

The uncertainty policy turns the three-valued labels into the binary targets used by the
study (see :func:`binarize`): ``"positive"`` (U-Ones, the default) or ``"negative"`` (U-Zeros).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from helpers.data import label_rules as R

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

OTHER_FINDING = "Other finding"
"""Label of mentions from CheXpert's No Finding phrase list (emphysema, granuloma,
degenerative changes, ...): not one of the 14 observations, but they rule out No Finding."""
_UNMENTION = "_UNMENTION"
_STAGES = ("pre-negation uncertainty", "negation", "uncertainty", "or-coordination",
           "hedged phrase", "positive")
RULE_CLASSES: tuple[str, ...] = _STAGES
"""What decided a mention's status, in the order the rules are tried (see :class:`Mention`)."""


def phrase_pattern(spec: str) -> list[dict] | str:
    """Token pattern of a word-spec phrase (see :mod:`helpers.data.label_rules`).

    Each space-separated word is a regular expression matched against a whole lower-cased
    token; an optional hyphen token may separate words. A single plain word becomes a spaCy
    phrase pattern (a string), which the entity ruler matches faster.
    """
    words = spec.split()
    if len(words) == 1 and re.fullmatch(r"[a-z']+", spec):
        return spec
    pattern: list[dict] = []
    for i, w in enumerate(words):
        if i:
            pattern.append({"ORTH": "-", "OP": "?"})
        plain = re.fullmatch(r"[a-z']+", w) is not None
        pattern.append({"LOWER": w} if plain else {"LOWER": {"REGEX": f"^(?:{w})$"}})
    return pattern


def phrase_regex(spec: str) -> re.Pattern:
    """A regular expression finding a word-spec phrase in free text (used on MeSH terms)."""
    words = [f"(?:{w})" for w in spec.split()]
    return re.compile(r"(?<![a-z])" + r"[\s-]+".join(words) + r"(?![a-z])")


def _ruler_patterns() -> list[dict]:
    """Entity-ruler patterns: observations, other findings and unmentions."""
    out = []
    for label, items in R.MENTIONS.items():
        for item in items:
            spec, tag = item if isinstance(item, tuple) else (item, "")
            pat = phrase_pattern(spec) if isinstance(spec, str) else spec
            out.append({"label": label, "pattern": pat, **({"id": tag} if tag else {})})
    out += [{"label": OTHER_FINDING, "pattern": phrase_pattern(s)} for s in R.NO_FINDING_OTHER]
    out += [{"label": _UNMENTION, "pattern": phrase_pattern(s)} for s in R.UNMENTIONS]
    return out


def _base_termset() -> dict[str, list[str]]:
    from negspacy.termsets import termset

    return {k: list(v) for k, v in termset("en_clinical").get_patterns().items()}


def _termset(preceding: list[str], following: list[str], pseudo: list[str],
             termination: list[str]) -> dict[str, list[str]]:
    return {"preceding_negations": preceding, "following_negations": following,
            "pseudo_negations": pseudo, "termination": termination}


def termsets() -> dict[str, dict[str, list[str]]]:
    """The three negspacy termsets, by pipeline stage name.

    ``preneg``: CheXpert's pre-negation uncertainty; ``negation``: negspacy's clinical
    termset with hedges removed ("cannot", "versus") and CheXpert's absence cues added;
    ``uncertainty``: CheXpert's post-negation uncertainty. The negation scope ends at a
    hedge ("no pneumothorax, possible effusion") and the uncertainty scope at a negation.
    """
    base = _base_termset()
    term = base["termination"] + R.TERMINATION_EXTRA
    pre, post, neg = R.PRE_NEGATION_UNCERTAINTY, R.POST_NEGATION_UNCERTAINTY, R.NEGATION_EXTRA
    hedges = {"cannot", "can't", "cant", "versus", "ro"}
    negation = _termset(
        [t for t in base["preceding_negations"] if t not in hedges] + neg["preceding"],
        base["following_negations"] + neg["following"],
        [t for t in base["pseudo_negations"] if "rule" not in t] + neg["pseudo"],
        [t for t in term if t != "secondary to"] + post["preceding"])
    uncertainty = _termset(post["preceding"], post["following"], post["pseudo"],
                           [t for t in term if t != "secondary to"]
                           + ["no", "without", "negative for"])
    preneg = _termset(pre["preceding"], pre["following"], [], term)
    return {"preneg": preneg, "negation": negation, "uncertainty": uncertainty}


@dataclass(frozen=True)
class Mention:
    """One mention in a report: its label, character span, status and deciding rule.

    ``label`` is one of the 13 observations before No Finding, or :data:`OTHER_FINDING`;
    ``rule`` is one of :data:`RULE_CLASSES` (or "heart failure" for the uncertain
    Cardiomegaly mention that CHF / heart failure adds).
    """

    label: str
    text: str
    start_char: int
    end_char: int
    status: float  # POSITIVE, NEGATIVE or UNCERTAIN
    rule: str = ""


def _or_coordinated(doc) -> set[int]:
    """Indices (into ``doc.ents``) of mentions coordinated by "or" / "versus" / "and/or".

    A mention is coordinated when an or-word follows it within two tokens, or stands
    between it and the previous mention (at most three tokens back); a comma list that
    ends in such a pair ("atelectasis, scarring, or pneumonia") is coordinated throughout.
    """
    ents = list(doc.ents)
    flagged: set[int] = set()
    for i, e in enumerate(ents):
        sent = e.sent
        after = doc[e.end:min(e.end + 2, sent.end)]
        ok_after = any(t.lower_ in R.OR_WORDS and t.i + 1 < sent.end and not doc[t.i + 1].is_punct
                       for t in after)
        lo = max(sent.start, e.start - 3, ents[i - 1].end if i and ents[i - 1].sent == sent else 0)
        ok_before = any(t.lower_ in R.OR_WORDS for t in doc[lo:e.start])
        if ok_after or ok_before:
            flagged.add(i)
    for i in range(len(ents) - 2, -1, -1):
        gap = doc[ents[i].end:ents[i + 1].start]
        if i + 1 in flagged and len(gap) == 1 and gap[0].text == ",":
            flagged.add(i)
    return flagged


def _status(ent, coordinated: bool) -> tuple[float, str]:
    """A mention's status and the rule class that decided it (CheXpert's order)."""
    if ent._.preneg_uncertain:
        return UNCERTAIN, _STAGES[0]
    if ent._.negex:
        return NEGATIVE, _STAGES[1]
    if ent._.uncertain or {t.lower_ for t in ent} & R.INSIDE_UNCERTAIN:
        return UNCERTAIN, _STAGES[2]
    if coordinated:
        return UNCERTAIN, _STAGES[3]
    if ent.ent_id_ == "hedged":
        return UNCERTAIN, _STAGES[4]
    return POSITIVE, _STAGES[5]


class ReportLabeler:
    """Rule-based CheXpert-14 labeler (spaCy blank English + entity ruler + three NegEx passes).

    Rules follow the CheXpert labeler (see :mod:`helpers.data.label_rules`): a mention is
    uncertain when a pre-negation hedge reaches it ("cannot exclude"), else negative when a
    negation does, else uncertain when a post-negation hedge, an "or" coordination or a
    hedged phrase ("vascular congestion") does, else positive.
    """

    VERSION = "2"

    @cached_property
    def nlp(self):
        """The spaCy pipeline, built on first use (no model download)."""
        import spacy
        from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)

        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"})
        ruler.add_patterns(_ruler_patterns())
        types = list(R.MENTIONS) + [OTHER_FINDING]
        for name, ext in (("preneg", "preneg_uncertain"), ("negation", "negex"),
                          ("uncertainty", "uncertain")):
            nlp.add_pipe("negex", name=name, config={
                "neg_termset": termsets()[name], "ent_types": types, "extension_name": ext})
        return nlp

    def mentions(self, text: str) -> list[Mention]:
        """All mentions in ``text`` (observations and other findings) with their status."""
        return self._mentions(self.nlp(text or ""))

    @staticmethod
    def _mentions(doc) -> list[Mention]:
        coordinated = _or_coordinated(doc)
        out = []
        for i, ent in enumerate(doc.ents):
            if ent.label_ == _UNMENTION:
                continue
            status, rule = _status(ent, i in coordinated)
            out.append(Mention(ent.label_, ent.text, ent.start_char, ent.end_char, status, rule))
            if ent.ent_id_ == "chf" and status != NEGATIVE:
                out.append(Mention("Cardiomegaly", ent.text, ent.start_char, ent.end_char,
                                   UNCERTAIN, "heart failure"))
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
        """Hash of the rules (this module, :mod:`label_rules`, spaCy and negspacy versions).

        Changes whenever the labels could change, so cached label tables rebuild. The versions
        are read from the installed packages' metadata: importing spaCy costs seconds (2.4 s of a
        chapter's start on two busy cores) and a cached label table never needs it.
        """
        from importlib import metadata

        h = hashlib.sha256(ReportLabeler.VERSION.encode())
        for f in (Path(__file__), Path(R.__file__)):
            h.update(f.read_bytes())
        h.update(f"{metadata.version('spacy')}|{metadata.version('negspacy')}".encode())
        return h.hexdigest()[:12]


def aggregate(mentions: Sequence[Mention]) -> dict[str, float]:
    """Report-level three-valued labels from mention statuses, with CheXpert's No Finding rule.

    Per observation: any positive -> 1, else any uncertain -> -1, else any negative -> 0,
    else NaN. No Finding is 1 unless a mention other than Support Devices (an observation
    or an :data:`OTHER_FINDING`) is positive or uncertain.
    """
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
    found = any(m.status in (POSITIVE, UNCERTAIN) for m in mentions
                if m.label != "Support Devices")
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
                     ("heart", ("enlarged",)), ("heart failure", ())],
    "Lung Opacity": [("opacity", ()), ("airspace disease", ()), ("infiltrate", ()),
                     ("cicatrix", ("lung",))],
    "Lung Lesion": [("nodule", ()), ("mass", ()), ("lung neoplasms", ())],
    "Edema": [("pulmonary edema", ()), ("pulmonary congestion", ()), ("heart failure", ()),
              ("edema", ())],
    "Consolidation": [("consolidation", ())],
    "Pneumonia": [("pneumonia", ())],
    "Atelectasis": [("pulmonary atelectasis", ())],
    "Pneumothorax": [("pneumothorax", ()), ("hydropneumothorax", ()), ("hemopneumothorax", ())],
    "Pleural Effusion": [("pleural effusion", ())],
    "Pleural Other": [("thickening", ("pleura",)), ("pleura", ("thickening",)),
                      ("cicatrix", ("pleura",)), ("pulmonary fibrosis", ()), ("fibrosis", ())],
    "Fracture": [("fractures, bone", ())],
    "Support Devices": [("catheters, indwelling", ()), ("implanted medical device", ()),
                        ("surgical instruments", ()), ("medical device", ()),
                        ("tube, inserted", ()), ("stents", ()), ("pacemaker, artificial", ())],
}
"""MeSH heading (and, where given, a needed subheading) per observation, with CheXpert's
definitions: scarring (Cicatrix/lung) is a Lung Opacity, fibrosis and pleural scarring are
Pleural Other, heart failure adds Cardiomegaly (as CheXpert's CHF rule does under U-Ones); a
blunted costophrenic angle, volume loss and a plain Density are *other findings*."""

MESH_OTHER_FINDING_SYNONYMS: list[str] = [
    "calcinosis", "osteophytes?", "spondylosis", "chronic obstructive", "elevated", "hyperlucent",
    "arthritis", "bone diseases, metabolic",
]
"""MeSH words for CheXpert's other findings that the phrase list spells differently
(Calcinosis = calcification, Osteophyte = osteophytosis, ...)."""


def _mesh_other_finding(term: str) -> bool:
    """Whether a MeSH term names one of CheXpert's other findings (rules out No Finding)."""
    t = term.lower()
    return any(p.search(t) for p in _MESH_OTHER_PATTERNS)


_MESH_OTHER_PATTERNS = [phrase_regex(s) for s in R.NO_FINDING_OTHER + MESH_OTHER_FINDING_SYNONYMS]


def mesh_labels(terms: Sequence[str]) -> dict[str, int]:
    """Binary CheXpert-14 labels from a report's MeSH terms (``major`` terms, "Heading/sub/...").

    "normal" and "no indexing" map to nothing; No Finding follows the text labeler's rule:
    1 unless a pathology or an other finding (any term matching CheXpert's No Finding phrase
    list, e.g. "Emphysema", "Thoracic Vertebrae/degenerative") is present.
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
    other = any(_mesh_other_finding(t) for t in terms)
    out["No Finding"] = int(not other and not any(out[p] for p in PATHOLOGIES))
    return out


def agreement(text: pd.DataFrame, mesh: pd.DataFrame,
              label_names: Sequence[str] = CHEXPERT_LABELS) -> pd.DataFrame:
    """Per-label agreement of two binary label schemes over the same reports.

    Parameters
    ----------
    text, mesh : (n_reports, k) 0/1 frames with columns ``label_names``
        (same row order).

    Returns
    -------
    One row per label: prevalence in each scheme (fraction of reports), Cohen's kappa,
    and F1 / precision / recall of the text labels taking the MeSH labels as the
    reference.
    """
    from sklearn.metrics import (cohen_kappa_score, f1_score, precision_score,
                                 recall_score)

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
    """HTML of ``text`` with each mention highlighted by status, titled with label and rule."""
    import html

    out, pos = [], 0
    for m in sorted(mentions, key=lambda m: m.start_char):
        if m.start_char < pos:
            continue
        color, word = _STATUS_STYLE[m.status]
        deco = "line-through" if m.status == NEGATIVE else "none"
        out.append(html.escape(text[pos:m.start_char]))
        out.append(f'<span title="{html.escape(m.label)}: {word} ({html.escape(m.rule)})" style="background:{color}22;'
                   f'border-bottom:2px solid {color};text-decoration:{deco}">'
                   f'{html.escape(text[m.start_char:m.end_char])}'
                   f'<sub style="color:{color}">{html.escape(m.label)}</sub></span>')
        pos = m.end_char
    out.append(html.escape(text[pos:]))
    return "".join(out)
