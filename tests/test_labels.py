"""The rule-based CheXpert labeler on hand-written report sentences, and the MeSH scheme."""

import math

import pandas as pd
import pytest

from helpers.data import labels as L

P, N, U = L.POSITIVE, L.NEGATIVE, L.UNCERTAIN

# (sentence, {label: expected three-valued status}); labels not listed must be not mentioned
# (NaN), except No Finding, which is checked separately.
CASES = [
    # negation
    ("No pleural effusion or pneumothorax.", {"Pleural Effusion": N, "Pneumothorax": N}),
    ("No focal consolidation.", {"Consolidation": N}),
    ("There is no pneumothorax.", {"Pneumothorax": N}),
    ("Lungs are clear without focal airspace disease.", {"Lung Opacity": N}),
    ("Negative for pneumonia.", {"Pneumonia": N}),
    ("No evidence of pulmonary edema.", {"Edema": N}),
    ("Pneumothorax is not seen.", {"Pneumothorax": N}),
    ("Free of pleural effusion.", {"Pleural Effusion": N}),
    ("Interval resolution of the left lower lobe pneumonia.", {"Pneumonia": N}),
    ("No acute fracture.", {"Fracture": N}),
    ("No cardiomegaly.", {"Cardiomegaly": N}),
    ("No suspicious pulmonary nodules or masses.", {"Lung Lesion": N}),
    ("No pericardial effusion.", {}),
    # uncertainty
    ("Cannot exclude pneumonia.", {"Pneumonia": U}),
    ("Pleural effusion cannot be excluded.", {"Pleural Effusion": U}),
    ("Opacity in the left base may represent atelectasis.", {"Lung Opacity": P, "Atelectasis": U}),
    ("Possible small right effusion, no pneumothorax.", {"Pleural Effusion": U, "Pneumothorax": N}),
    ("Atelectasis versus scarring at the right base.", {"Atelectasis": U, "Lung Opacity": U}),
    ("Findings suspicious for pneumonia.", {"Pneumonia": U}),
    ("Heart size borderline enlarged.", {"Cardiomegaly": U}),
    ("Questionable nodule in the right upper lobe.", {"Lung Lesion": U}),
    ("Likely bibasilar atelectasis.", {"Atelectasis": P}),  # "likely" is no CheXpert cue
    # normal phrasing: no mention at all
    ("Heart size is normal.", {}),
    ("The heart is normal in size.", {}),
    ("The cardiomediastinal silhouette is within normal limits.", {}),
    ("No acute cardiopulmonary abnormality.", {}),
    ("The lungs are clear.", {}),
    ("Calcified granuloma in the right upper lobe.", {}),
    # positives and synonyms
    ("Stable mild cardiomegaly.", {"Cardiomegaly": P}),
    ("Cardiac enlargement with small bilateral effusions.", {"Cardiomegaly": P, "Pleural Effusion": P}),
    ("The heart is enlarged.", {"Cardiomegaly": P}),
    ("Heart size is mildly enlarged.", {"Cardiomegaly": P}),
    ("Left-sided pacemaker in place.", {"Support Devices": P}),
    ("Sternotomy wires are intact.", {"Support Devices": P}),
    ("Right IJ central venous catheter tip in the SVC.", {"Support Devices": P}),
    ("Small nodule in the left lung.", {"Lung Lesion": P}),
    ("Healed right rib fractures.", {"Fracture": P}),
    ("Blunting of the left costophrenic angle.", {}),  # an other finding, not an effusion
    ("Cardiomediastinal silhouette is enlarged.", {"Enlarged Cardiomediastinum": P}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": P}),
    ("Pulmonary vascular congestion is present.", {"Edema": U}),  # hedged phrase
    ("Right upper lobe consolidation.", {"Consolidation": P}),
    ("Left apical pneumothorax.", {"Pneumothorax": P}),
    ("Bilateral apical pleural thickening.", {"Pleural Other": P}),
    ("Patchy infiltrates in the right lower lobe.", {"Lung Opacity": P}),
    ("Subsegmental atelectasis at the left base.", {"Atelectasis": P}),
    # scope: termination words end a negation
    ("No evidence of pneumothorax, but there is cardiomegaly.", {"Pneumothorax": N, "Cardiomegaly": P}),
    ("There is no pneumothorax and there is cardiomegaly.", {"Pneumothorax": N, "Cardiomegaly": P}),
]

# CheXpert rule classes (github.com/stanfordmlgroup/chexpert-labeler): mention phrase lists,
# pre-negation uncertainty, negation, post-negation uncertainty, "X or Y", hedged phrases, what
# is NOT a hedge, and the CHF rule. Each case is (sentence, expected statuses).
CHEXPERT_CASES = [
    # mention phrase lists
    ("Left basilar scarring.", {"Lung Opacity": P}),
    ("Scar in the right upper lobe.", {"Lung Opacity": P}),
    ("Apical pleural scarring.", {"Pleural Other": P}),
    ("Pleural-parenchymal scarring at both apices.", {"Pleural Other": P}),
    ("Bilateral pulmonary fibrosis.", {"Pleural Other": P}),
    ("Increased interstitial markings.", {"Lung Opacity": P}),
    ("Air-space disease in the right lower lobe.", {"Lung Opacity": P}),
    ("Nodular density in the left lower lobe.", {"Lung Lesion": P}),
    ("Calcified nodule in the left upper lobe.", {}),
    ("Massive cardiomegaly.", {"Cardiomegaly": P}),
    ("Small pericardial effusion.", {}),
    ("Right-sided hydropneumothorax.", {"Pneumothorax": P}),
    ("Bronchopneumonia in the left lower lobe.", {"Pneumonia": P}),
    ("Old fractured left clavicle.", {"Fracture": P}),
    ("Left-sided AICD in place.", {"Support Devices": P}),
    ("Midline sternotomy XXXX.", {"Support Devices": P}),
    ("Kerley B lines at the bases.", {}),
    ("Positive tuberculosis skin test.", {}),
    # pre-negation uncertainty: wins over negation
    ("Small effusion is not excluded.", {"Pleural Effusion": U}),
    ("Cannot rule out a small pneumothorax.", {"Pneumothorax": U}),
    ("No new consolidation.", {"Consolidation": U}),
    # post-negation uncertainty
    ("Findings may represent early pneumonia.", {"Pneumonia": U}),
    ("Possible small left pleural effusion.", {"Pleural Effusion": U}),
    ("Opacity concerning for pneumonia.", {"Lung Opacity": P, "Pneumonia": U}),
    ("Atelectasis secondary to the effusion.", {"Atelectasis": P, "Pleural Effusion": U}),
    ("Edema is poorly evaluated on this film.", {"Edema": U}),
    ("Pneumothorax is less likely.", {"Pneumothorax": U}),
    ("Heart size is borderline.", {"Cardiomegaly": U}),
    ("Borderline heart size.", {"Cardiomegaly": U}),
    # "X or Y" (and versus, and/or), including a comma list ending in "or"
    ("Atelectasis or pneumonia in the left base.", {"Atelectasis": U, "Pneumonia": U}),
    ("Atelectasis and/or scarring at the bases.", {"Atelectasis": U, "Lung Opacity": U}),
    ("Right lower lobe infiltrate versus atelectasis.", {"Lung Opacity": U, "Atelectasis": U}),
    ("Atelectasis, scarring, or pneumonia.", {"Atelectasis": U, "Lung Opacity": U, "Pneumonia": U}),
    # hedged phrases (uncertain unless negated)
    ("Mild indistinctness of the pulmonary vasculature.", {"Edema": U}),
    ("No pulmonary vascular congestion.", {"Edema": N}),
    # not hedges in CheXpert: positive
    ("Probably atelectasis at the right base.", {"Atelectasis": P}),
    ("Findings suggestive of pneumonia.", {"Pneumonia": P}),
    ("Opacity consistent with atelectasis.", {"Lung Opacity": P, "Atelectasis": P}),
    ("Findings compatible with pulmonary edema.", {"Edema": P}),
    # negation, and where its scope ends
    ("No pneumothorax, possible small effusion.", {"Pneumothorax": N, "Pleural Effusion": U}),
    ("History of pneumonia.", {"Pneumonia": N}),
    ("Interval removal of the left chest tube.", {"Support Devices": N}),
    ("Pneumothorax has resolved.", {"Pneumothorax": N}),
    ("No effusion or pneumothorax.", {"Pleural Effusion": N, "Pneumothorax": N}),
    ("Pneumonia is unlikely.", {"Pneumonia": N}),
    # CHF / heart failure also gives an uncertain Cardiomegaly
    ("Congestive heart failure.", {"Edema": P, "Cardiomegaly": U}),
    ("No evidence of CHF.", {"Edema": N}),
]


@pytest.fixture(scope="module")
def labeler():
    return L.ReportLabeler()


def test_case_count():
    assert len(CASES) >= 40
    assert len(CHEXPERT_CASES) >= 30


ALL_CASES = CASES + CHEXPERT_CASES


@pytest.mark.parametrize("sentence,expected", ALL_CASES, ids=[c[0][:40] for c in ALL_CASES])
def test_sentence(labeler, sentence, expected):
    got = labeler.label(sentence)
    for label in L.CHEXPERT_LABELS[:-1]:
        if label in expected:
            assert got[label] == expected[label], (label, got[label])
        else:
            assert math.isnan(got[label]), f"{label} unexpectedly {got[label]}"


@pytest.mark.parametrize("text,no_finding", [
    ("Heart size normal. Lungs are clear. No effusion.", 1),
    ("Cardiomegaly.", 0),
    ("Cannot exclude pneumonia.", 0),          # uncertain pathology blocks No Finding
    ("Pacemaker in place. Lungs are clear.", 1),  # Support Devices do not count
    ("", 1),                                   # empty report: nothing found
    # CheXpert's No Finding phrase list: other findings rule it out when positive or uncertain
    ("Degenerative changes of the thoracic spine. Lungs are clear.", 0),
    ("Calcified granuloma in the right upper lobe.", 0),
    ("Hyperinflated lungs consistent with emphysema.", 0),
    ("Possible emphysema.", 0),
    ("Small hiatal hernia.", 0),
    ("Blunting of the left costophrenic angle.", 0),
    ("No emphysema. Lungs are clear.", 1),          # negated other finding
    ("Sternotomy XXXX and mediastinal clips. Lungs are clear.", 1),  # devices only
    ("Left chest tube. No pneumothorax.", 1),
])
def test_no_finding_rule(labeler, text, no_finding):
    assert labeler.label(text)["No Finding"] == no_finding


def test_every_rule_class_decides_a_case(labeler):
    rules = {m.rule for text, _ in ALL_CASES for m in labeler.mentions(text)}
    assert set(L.RULE_CLASSES) | {"heart failure"} <= rules


def test_other_findings_are_not_observations(labeler):
    ms = labeler.mentions("Calcified granuloma. Degenerative changes of the spine.")
    assert ms and {m.label for m in ms} == {L.OTHER_FINDING}
    got = labeler.label("Calcified granuloma. Degenerative changes of the spine.")
    assert all(math.isnan(got[c]) for c in L.CHEXPERT_LABELS[:-1]) and got["No Finding"] == 0


def test_fingerprint_tracks_the_rules(monkeypatch):
    before = L.ReportLabeler.fingerprint()
    assert before == L.ReportLabeler.fingerprint()
    monkeypatch.setattr(L.ReportLabeler, "VERSION", "test-bump")
    assert L.ReportLabeler.fingerprint() != before


def test_label_many_matches_label(labeler):
    texts = [c[0] for c in CASES[:10]]
    many = labeler.label_many(texts)
    one = pd.DataFrame([labeler.label(t) for t in texts])
    pd.testing.assert_frame_equal(many, one[list(L.CHEXPERT_LABELS)])


def test_binarize_policies():
    three = pd.DataFrame({"A": [1.0, 0.0, -1.0, float("nan")]})
    assert L.binarize(three, "positive").A.tolist() == [1, 0, 1, 0]
    assert L.binarize(three, "negative").A.tolist() == [1, 0, 0, 0]
    with pytest.raises(ValueError, match="uncertain_policy='maybe'.*positive"):
        L.binarize(three, "maybe")


def test_mesh_labels():
    out = L.mesh_labels(["Cardiomegaly/mild", "Pleural Effusion/right",
                         "Catheters, Indwelling", "Cardiac Shadow/enlarged"])
    assert out["Cardiomegaly"] == 1 and out["Pleural Effusion"] == 1
    assert out["Support Devices"] == 1 and out["No Finding"] == 0
    assert L.mesh_labels(["normal"]) == {**{c: 0 for c in L.CHEXPERT_LABELS[:-1]}, "No Finding": 1}
    # a subheading is needed where the rule says so
    assert L.mesh_labels(["Mediastinum/right"])["Enlarged Cardiomediastinum"] == 0
    assert L.mesh_labels(["Mediastinum/prominent"])["Enlarged Cardiomediastinum"] == 1
    # only Support Devices: still No Finding
    assert L.mesh_labels(["Medical Device"])["No Finding"] == 1
    assert L.mesh_labels(["Catheters, Indwelling/right"])["No Finding"] == 1


def test_mesh_labels_follow_chexpert_definitions():
    # scarring is a Lung Opacity; pleural scarring and fibrosis are Pleural Other
    assert L.mesh_labels(["Cicatrix/lung/apex"])["Lung Opacity"] == 1
    assert L.mesh_labels(["Cicatrix/pleura/apex"])["Pleural Other"] == 1
    assert L.mesh_labels(["Pulmonary Fibrosis/base"])["Pleural Other"] == 1
    # a blunted costophrenic angle is an other finding, not an effusion
    blunted = L.mesh_labels(["Costophrenic Angle/right/blunted"])
    assert blunted["Pleural Effusion"] == 0 and blunted["No Finding"] == 0
    # other findings (the No Finding phrase list and its MeSH spellings) rule out No Finding
    for term in ["Thoracic Vertebrae/degenerative", "Calcinosis/lung", "Emphysema",
                 "Calcified Granuloma/lung/upper lobe", "Hernia, Hiatal", "Osteophyte/spine"]:
        out = L.mesh_labels([term])
        assert out["No Finding"] == 0 and sum(out.values()) == 0, term
    assert L.mesh_labels(["Aorta/tortuous"])["No Finding"] == 1


def test_agreement_table():
    a = pd.DataFrame({"X": [1, 1, 0, 0], "Y": [0, 0, 0, 0]})
    b = pd.DataFrame({"X": [1, 0, 0, 0], "Y": [0, 0, 0, 0]})
    t = L.agreement(a, b, ["X", "Y"])
    assert t.loc["X", "prevalence (text)"] == 0.5 and t.loc["X", "prevalence (MeSH)"] == 0.25
    assert t.loc["X", "recall"] == 1.0 and t.loc["X", "precision"] == 0.5
    assert t.loc["X", "kappa"] == pytest.approx(0.5)
    assert t.loc["Y", "kappa"] == 1.0  # both schemes constant and equal


def test_mentions_html_escapes_and_marks(labeler):
    text = "No effusion <b>. Cardiomegaly."
    html = L.mentions_html(text, labeler.mentions(text))
    assert "&lt;b&gt;" in html and "line-through" in html and "Cardiomegaly" in html
