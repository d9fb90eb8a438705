"""The rule-based CheXpert labeler on hand-written report sentences, and the MeSH scheme."""

import math

import pandas as pd
import pytest

from helpers import labels as L

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
    ("Atelectasis versus scarring at the right base.", {"Atelectasis": U}),
    ("Findings suspicious for pneumonia.", {"Pneumonia": U}),
    ("Heart size borderline enlarged.", {"Cardiomegaly": U}),
    ("Questionable nodule in the right upper lobe.", {"Lung Lesion": U}),
    ("Likely bibasilar atelectasis.", {"Atelectasis": U}),
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
    ("Blunting of the left costophrenic angle.", {"Pleural Effusion": P}),
    ("Cardiomediastinal silhouette is enlarged.", {"Enlarged Cardiomediastinum": P}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": P}),
    ("Pulmonary vascular congestion is present.", {"Edema": P}),
    ("Right upper lobe consolidation.", {"Consolidation": P}),
    ("Left apical pneumothorax.", {"Pneumothorax": P}),
    ("Bilateral apical pleural thickening.", {"Pleural Other": P}),
    ("Patchy infiltrates in the right lower lobe.", {"Lung Opacity": P}),
    ("Subsegmental atelectasis at the left base.", {"Atelectasis": P}),
    # scope: termination words end a negation
    ("No evidence of pneumothorax, but there is cardiomegaly.", {"Pneumothorax": N, "Cardiomegaly": P}),
    ("There is no pneumothorax and there is cardiomegaly.", {"Pneumothorax": N, "Cardiomegaly": P}),
]


@pytest.fixture(scope="module")
def labeler():
    return L.ReportLabeler()


def test_case_count():
    assert len(CASES) >= 40


@pytest.mark.parametrize("sentence,expected", CASES, ids=[c[0][:40] for c in CASES])
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
])
def test_no_finding_rule(labeler, text, no_finding):
    assert labeler.label(text)["No Finding"] == no_finding


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
    assert L.mesh_labels(["Costophrenic Angle/right"])["Pleural Effusion"] == 0
    assert L.mesh_labels(["Costophrenic Angle/right/blunted"])["Pleural Effusion"] == 1
    # only Support Devices: still No Finding
    assert L.mesh_labels(["Medical Device"])["No Finding"] == 1


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
