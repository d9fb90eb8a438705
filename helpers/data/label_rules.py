"""The CheXpert labeler's rules, restated for a spaCy + NegEx pipeline (data only, no logic).

Everything :class:`helpers.data.labels.ReportLabeler` knows about report language lives here:
mention phrases per observation, the *other findings* that also rule out No Finding, and
three cue lists that mirror the three rule files of the CheXpert labeler
(Irvin et al. 2019; github.com/stanfordmlgroup/chexpert-labeler):

* ``PRE_NEGATION_UNCERTAINTY``: hedges that win even over a negation ("cannot exclude",
  "no new"); CheXpert's ``patterns/pre_negation_uncertainty.txt``.
* ``NEGATION``: absence cues ("no", "without", "resolved", "normal");
  CheXpert's ``patterns/negation.txt``, via negspacy's clinical termset.
* ``POST_NEGATION_UNCERTAINTY``: hedges that apply only to mentions no negation reached
  ("may", "possible", "suspicious for", "versus"); ``patterns/post_negation_uncertainty.txt``.

CheXpert matches raw substrings and classifies mentions on a dependency parse; we match
whole words (a word spec is a regular expression for one token, so inflections are written
out) and classify with NegEx scopes. Where that forces, or where we chose, a different rule,
:data:`DIFFERENCES` says so; chapter 1 prints it.

Word specs: a phrase is a space-separated list of token regexes, each matched against the
whole lower-cased token (``"pleural effusions?"``); an optional hyphen token is allowed
between words (``"air space disease"`` matches "air-space disease").
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------
# Mentions. CheXpert's phrase lists (phrases/mention/*.txt), as token regexes. Entries
# tagged "hedged" are uncertain unless negated (CheXpert's post-negation rules name them
# outright); entries tagged "chf" also add an uncertain Cardiomegaly mention when they are
# positive or uncertain (CheXpert's aggregation exception for CHF and heart failure).
# --------------------------------------------------------------------------------------
_BE = ["is", "are", "appears", "appear", "remains", "remain", "again", "now", "still", "stably",
       "mildly", "moderately", "markedly", "severely", "slightly", "minimally", "somewhat",
       "be", "been", "has", "have", "become", "and", "size", "in"]
_ENLARGED = ["enlarged", "enlargement", "increased", "large", "prominent", "widened", "widening",
             "wide"]


def adj_pattern(heads: list[str], subs: list[str], adjs: list[str]) -> list[dict]:
    """Token pattern ``(the)? HEAD SUB? (BE-like word)* ADJ``, e.g. "heart size is enlarged"."""
    return [
        {"LOWER": "the", "OP": "?"},
        {"LOWER": {"IN": heads}},
        {"LOWER": {"IN": subs}, "OP": "?"},
        {"LOWER": {"IN": _BE}, "OP": "*"},
        {"LOWER": {"IN": adjs}},
    ]


MENTIONS: dict[str, list] = {
    # CheXpert mentions the structure ("the heart", "cardiac silhouette", "mediastinum",
    # "contour") and lets the parse negate normal descriptions; without a parse we need an
    # enlargement word (see DIFFERENCES).
    "Enlarged Cardiomediastinum": [
        "widened mediastinum", "mediastinal widening", "mediastinal enlargement",
        "enlarged mediastinum", "enlarged cardiomediastinum", "cardiomediastinal enlargement",
        "enlarged cardiomediastinal silhouette", "enlargement of the cardiomediastinal silhouette",
        "prominent mediastinum", "mediastinal prominence", "widening of the mediastinum",
        "prominent cardiomediastinal silhouette", "widened cardiomediastinal silhouette",
        adj_pattern(["mediastinum", "mediastinal", "cardiomediastinal"],
                    ["silhouette", "contour", "contours", "shadow", "width"], _ENLARGED),
    ],
    "Cardiomegaly": [
        "cardiomegaly", "cardiac enlargement", "enlarged heart", "enlarged cardiac silhouette",
        "enlargement of the cardiac silhouette", "enlargement of the heart", "heart enlargement",
        "enlarged cardiac shadow", "large heart", "cardiac silhouette enlargement",
        "borderline (heart|cardiac) (size|silhouette|enlargement)",
        adj_pattern(["heart", "cardiac"], ["size", "silhouette", "shadow", "contour"],
                    ["enlarged", "enlargement", "increased", "large", "prominent", "borderline"]),
    ],
    "Lung Opacity": [
        "opaci.*", "decreased translucency", "increased densit(y|ies)", "airspace disease",
        "air space disease", "infiltrat.*", "interstitial markings?", "interstitial pattern",
        "interstitial lung", "reticular pattern", "reticular markings?", "reticulation",
        "parenchymal scar.*", "peribronchial thickening", "wall thickening",
        "scars?", "scarr(ing|ed|ings)",
    ],
    "Lung Lesion": [
        "mass(es)?", "nodular densit(y|ies)", "nodular opaci.*", "nodules?", "lumps?",
        "cavitary lesions?", "carcinomas?", "neoplasms?", "tumou?rs?",
    ],
    "Edema": [
        "edema", ("heart failure", "chf"), ("chf", "chf"),
        ("vascular congestion", "hedged"), ("pulmonary congestion", "hedged"),
        ("indistinctness", "hedged"), ("vascular prominence", "hedged"),
    ],
    "Consolidation": ["consolidat.*"],
    "Pneumonia": ["(broncho)?pneumonias?", "infections?", "infectious"],
    "Atelectasis": ["atelecta.*", "collapsed?"],
    "Pneumothorax": ["(hydro|hemo)?pneumothora(x|ces|xes)"],
    "Pleural Effusion": ["pleural fluid", "effusions?"],
    "Pleural Other": [
        "pleural thickening", "fibrosis", "fibrothorax", "pleural scar.*",
        "pleural parenchymal scar.*", "pleuro parenchymal scar.*", "pleuroparenchymal scar.*",
        "pleuro pericardial scar.*",
    ],
    "Fracture": ["fractur.*"],
    "Support Devices": [
        "pacer.*", "lines?", "picc", "tubes?", "valves?", "catheters?", "pacemakers?",
        "hardware", "arthroplast.*", "markers?", "a?icds?", "defib.*", "devices?", "drains?",
        "plates?", "screws?", "cannula.*", "apparatus", "coils?", "support", "equipment",
        "mediport",
        # kept beyond CheXpert's list (see DIFFERENCES)
        "sternotomy", "tracheostomy", "clips?", "stents?", "port a cath", "dobhoff",
    ],
}

# CheXpert's phrases/mention/no_finding.txt: other findings that rule out No Finding when
# positive or uncertain, without being one of the 14 observations.
NO_FINDING_OTHER: list[str] = [
    "emphysema(tous)?", "blunt.*", "densit(y|ies)", "elevation", "eventration", "scoliosis",
    "degenera.*", "calcifi.*", "hyperinflat.*", "bronchospasm", "asthma.*", "hernias?",
    "copd", "plaques?", "osteophytosis", "aortic disease", "bronchiolitis", "airways? disease",
    "thickening", "cephalization", "aspiration", "bullae", "contusions?", "atherosclero.*",
    "osteopeni.*", "metastas(is|es)", "granulomas?", "granulomatous", "pneumomediastinum",
    "pneumoperitoneum", "osteodystrophy", "cuffing", "irregular lucency", "inflam.*",
    "fissures?", "hypertension", "prominen.*", "kyphosis", "hyperexpan.*", "bullets?",
    "reticula.*", "thoracentesis", "bronchitis", "volume loss", "deformit(y|ies)",
    "hemorrhage", "hematoma", "radiopaque", "aerophagia", "arthropath.*",
    "calcified nodules?",  # CheXpert: not a Lung Lesion (unmention), but "calcifi" counts here
]

# Phrases that contain a mention word but are not that observation (CheXpert's
# phrases/unmention/*.txt, plus the "line"s of a radiograph that are not devices).
UNMENTIONS: list[str] = [
    "pericardial effusions?", "joint effusions?", "massive", "pleural lines?", "septal lines?",
    "kerley b lines?", "b lines", "lung lines?", "midclavicular line", "suture lines?", "skin lines?",
]

# --------------------------------------------------------------------------------------
# Cue lists (NegEx triggers: "preceding" cues act on mentions after them, "following"
# cues on mentions before them, within a sentence up to a termination word).
# --------------------------------------------------------------------------------------
PRE_NEGATION_UNCERTAINTY: dict[str, list[str]] = {
    "preceding": ["cannot exclude", "can not exclude", "can't exclude", "cannot rule out",
                  "can not rule out", "can't rule out", "no new", "no evidence to rule out",
                  "not exclude"],
    "following": ["cannot be excluded", "can not be excluded", "not be excluded",
                  "not excluded", "not been excluded", "cannot be ruled out", "not ruled out",
                  "not be ruled out"],
}

NEGATION_EXTRA: dict[str, list[str]] = {
    "preceding": ["clear of", "clearing of", "resolution of", "resolved", "without evidence of",
                  "no definite", "no obvious", "no focal", "no acute", "no visible",
                  "no radiographic evidence of", "no findings of", "removal of",
                  "interval removal of", "normal", "unremarkable", "no large", "no significant",
                  "no gross", "no displaced", "no visualized", "history of", "free of",
                  "disappearance of", "drainage of", "rather than", "no longer", "to exclude",
                  "exclude", "no area of", "no focus of", "without development of"],
    "following": ["is not seen", "are not seen", "not identified", "is not identified",
                  "are absent", "is absent", "absent", "has resolved", "have resolved", "resolved",
                  "not present", "is not present", "are not present", "not visualized",
                  "is not visualized", "has been removed", "have been removed", "removed",
                  "not evident", "is not evident", "is not enlarged", "not enlarged",
                  "is no longer seen", "no longer seen", "no longer visualized", "has cleared",
                  "have cleared", "cleared", "is normal", "are normal", "within normal limits",
                  "is unremarkable", "are unremarkable", "is excluded", "excluded"],
    "pseudo": ["no interval change in", "no change in", "not significantly changed"],
}

POST_NEGATION_UNCERTAINTY: dict[str, list[str]] = {
    "preceding": ["possible", "possibly", "presumably", "probable", "questionable",
                  "question of", "suspect", "suspected", "suspicious for", "suspicion of",
                  "suspicion for", "concern for", "concerning for", "worrisome for", "may",
                  "might", "could", "would", "maybe", "suggestion of", "consider",
                  "considered", "favor", "favored", "favoring", "differential diagnosis",
                  "differential includes", "secondary to", "correlate clinically for",
                  "correlation for", "obscuring", "obscures", "versus", "vs", "vs."],
    "following": ["is possible", "are possible", "is suspected", "are suspected", "suspected",
                  "is questioned", "versus", "vs", "vs.", "is poorly evaluated",
                  "poorly evaluated", "incompletely evaluated", "not well visualized",
                  "not well evaluated", "not well seen", "not clearly seen",
                  "is not appreciated", "are not appreciated", "not appreciated",
                  "was not appreciated", "is obscured", "are obscured", "obscured",
                  "is less likely", "less likely", "may be present", "could be present",
                  "might be present"],
    "pseudo": ["no increase", "not likely"],
}
"""Not cues, as in CheXpert: "likely", "probably", "suggest(s/ive of)", "consistent with",
"compatible with" (each without a modal verb)."""

OR_WORDS: frozenset[str] = frozenset({"or", "and/or", "versus", "vs", "vs."})
"""Coordinators that make both sides uncertain ("atelectasis or scarring"), as CheXpert's
``conj:or`` / ``conj:versus`` rules do; negation is checked first, so "no effusion or
pneumothorax" stays negative."""

INSIDE_UNCERTAIN: frozenset[str] = frozenset(
    {"borderline", "possible", "possibly", "questionable", "probable"})
"""A hedge inside the matched mention ("heart size is borderline enlarged")."""

TERMINATION_EXTRA: list[str] = ["there is", "there are", "and there", "otherwise"]

# --------------------------------------------------------------------------------------
# Where our rules still differ from CheXpert's, and why (printed in chapter 1).
# --------------------------------------------------------------------------------------
DIFFERENCES: list[dict[str, str]] = [
    {"rule": "Heart and mediastinum mentions",
     "CheXpert": "mentions the structure ('the heart', 'heart size', 'cardiac silhouette', "
                 "'mediastinum', 'contour'); the dependency parse negates normal descriptions",
     "ours": "needs an enlargement word ('enlarged', 'widened', 'cardiomegaly'); normal "
             "descriptions are simply not mentioned",
     "why": "without a parse, every structure mention that no normality cue reaches would "
            "become positive; binary labels are the same for 'normal' and 'enlarged'"},
    {"rule": "'Stable' / 'unchanged' heart or mediastinum",
     "CheXpert": "uncertain for Cardiomegaly / Enlarged Cardiomediastinum (the prior size is "
                 "unknown)",
     "ours": "not mentioned unless an enlargement word is present",
     "why": "follows from the row above; under U-Ones CheXpert's rule would make every "
            "'stable cardiomediastinal silhouette' a positive"},
    {"rule": "'Borderline'",
     "CheXpert": "uncertain only in 'borderline heart size'",
     "ours": "uncertain wherever it qualifies a mention ('borderline cardiomegaly')",
     "why": "the word hedges the same way; MeSH codes it as Cardiomegaly/borderline"},
    {"rule": "Matching unit",
     "CheXpert": "raw substrings ('tube' also matches 'tuberculosis', 'icd' 'aicd')",
     "ours": "whole words with their inflections written out",
     "why": "avoids substring collisions; inflections keep the same coverage"},
    {"rule": "Support Devices list",
     "CheXpert": "no 'sternotomy', 'clips', 'stent'; 'tracheostomy' and 'defib' are also "
                 "No Finding phrases",
     "ours": "sternotomy, clips, stents, port-a-cath are devices; tracheostomy and defib are "
             "devices only, so they never block No Finding",
     "why": "IU-Xray's de-identification replaced 'wires' by XXXX ('sternotomy XXXX'); the "
            "MeSH coders index these as devices; a device must not rule out No Finding"},
    {"rule": "Non-device 'lines'",
     "CheXpert": "'lines' is a Support Devices phrase, so 'Kerley B lines' is a device",
     "ours": "pleural, septal, Kerley B, suture and skin lines are not devices",
     "why": "they are anatomy or signs, not devices"},
    {"rule": "Scope of cues",
     "CheXpert": "dependency-graph patterns decide which mention a cue governs",
     "ours": "NegEx scopes: a cue reaches every mention to its right (preceding) or left "
             "(following) in the sentence, up to a termination word",
     "why": "no parser in the pipeline (spaCy blank English); long sentences with two "
            "clauses can be over-reached"},
    {"rule": "'X or Y'",
     "CheXpert": "conj:or in the parse, whatever Y is",
     "ours": "a mention next to 'or' / 'versus' / 'and/or' (or in a comma list ending in "
             "one), unless negated",
     "why": "no parser; the word window approximates the coordination"},
    {"rule": "'unlikely'",
     "CheXpert": "no rule ('less likely' is uncertain)",
     "ours": "negation (negspacy's clinical termset); 'less likely' is uncertain",
     "why": "'X is unlikely' states absence"},
]
