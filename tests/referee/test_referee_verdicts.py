"""Referee: verdicts from differences, control power, degenerate controls, Holm's adjustment.

Every verdict of the book is computed by :mod:`helpers.analysis.findings` from bootstrap replicates.
Here each branch of the rule is forced with hand-made replicates, Holm's adjustment is checked
against a direct implementation of the step-down procedure, and the pairing of finding and
control (the same report resamples) is checked on a case where their difference is a constant.
"""

import json

import numpy as np
import pytest

from helpers.book import artefacts
from helpers.analysis import findings

RNG = np.random.default_rng(0)


def _reps(mean, half_width, n=400):
    """Replicates whose 95% percentile interval is about mean ± half_width."""
    return mean + half_width / 1.96 * RNG.standard_normal(n)


def _rec(f_mean, f_hw, c_mean, c_hw, margin=0.05, rule=None, kind="finding", paired_noise=None):
    f, c = _reps(f_mean, f_hw), _reps(c_mean, c_hw)
    if paired_noise is not None:  # the same resample moves both: their difference is tight
        shared = RNG.standard_normal(len(f)) * paired_noise
        f, c = f_mean + shared, c_mean + shared
    test = findings.from_values((f_mean, f), (c_mean, c))
    return findings.record("exploratory x", "0x_test", "claim", test, rule or {"above": 0.0},
                           "ctrl", margin=margin, kind=kind)


def test_a_clear_finding_with_a_powered_control_holds():
    r = _rec(0.20, 0.03, 0.0, 0.02)
    assert r["holds"] and r["clears_rule"] and r["difference"]["clears_margin"]
    assert r["control"]["powered"] and not r["control"]["degenerate"]
    assert r["verdict"].startswith("holds") and r["p_value"] < findings.ALPHA


def test_an_underpowered_control_cannot_make_a_finding_hold():
    """The case the book published: 7 independent pairs, control CI up to +0.053."""
    r = _rec(0.20, 0.03, 0.0, 0.10)
    assert r["clears_rule"] and not r["control"]["powered"] and not r["holds"]
    assert "underpowered" in r["verdict"] and r["p_value"] == 1.0


def test_a_degenerate_control_is_flagged():
    """Chapter 6's controls were all one constant (-0.391): a control that cannot fail."""
    test = findings.from_values((0.2, _reps(0.2, 0.03)), (-0.391, np.full(400, -0.391)))
    r = findings.record("x", "0x", "claim", test, {"above": 0.0}, "ctrl", margin=0.05)
    assert r["control"]["degenerate"] and not r["holds"] and "degenerate" in r["verdict"]


def test_a_finding_no_clearer_than_its_control_is_not_established():
    r = _rec(0.10, 0.02, 0.09, 0.02, paired_noise=0.01)
    assert r["clears_rule"] and not r["difference"]["clears_margin"] and not r["holds"]
    assert "not clearer" in r["verdict"]


def test_pairing_makes_the_difference_tight():
    groups = np.repeat(np.arange(40), 2)
    x = RNG.random(80)
    t = findings.compare(lambda i: x[i].mean() + 0.3, lambda i: x[i].mean(), groups, n_boot=200)
    _, d = t.difference
    assert np.allclose(d, 0.3)  # same resamples: finding - control is the constant
    assert np.std(t.finding[1]) > 0.01


def test_a_finding_that_misses_its_rule_does_not_hold():
    r = _rec(0.01, 0.05, -0.2, 0.02)
    assert not r["clears_rule"] and not r["holds"] and r["verdict"].startswith("does not hold")


def test_below_rules_mirror_above_rules():
    r = _rec(-0.20, 0.03, 0.0, 0.02, rule={"below": 0.0})
    assert r["holds"] and r["difference"]["ci95"][1] < -0.05


def test_validation_checks_are_not_findings():
    r = _rec(0.5, 0.05, 0.0, 0.2, kind="validation")  # underpowered control: irrelevant here
    assert r["holds"] and r["verdict"] == "validated"
    fam = findings.holm([r, _rec(0.2, 0.03, 0.0, 0.02)])
    assert fam[0]["verdict_holm"].startswith("validation") and fam[0]["p_holm"] is None


def test_records_need_a_margin_and_a_valid_rule():
    test = findings.from_values((0.1, _reps(0.1, 0.01)), (0.0, _reps(0.0, 0.01)))
    with pytest.raises(ValueError, match="margin"):
        findings.record("not declared", "0x", "c", test, {"above": 0.0}, "ctrl")
    with pytest.raises(ValueError, match="rule"):
        findings.record("x", "0x", "c", test, {"over": 0.0}, "ctrl", margin=0.1)


def test_declared_findings_take_their_margin_from_the_registry():
    test = findings.from_values((0.3, _reps(0.3, 0.02)), (0.0, _reps(0.0, 0.02)))
    r = findings.record("ft: model randomisation", "06_grad_cam", "c", test, {"above": 0.0}, "ctrl")
    assert r["margin"] == findings.declared("ft: model randomisation").margin and r["primary"]
    assert "ft: model randomisation" in findings.family()
    assert findings.declared("control: model randomisation").kind == "validation"


def test_validate_refuses_a_forged_verdict():
    r = _rec(0.20, 0.03, 0.0, 0.02)
    with pytest.raises(ValueError, match="does not follow"):
        findings.validate(dict(r, holds=False))
    with pytest.raises(ValueError, match="does not follow"):
        findings.validate(dict(r, control=dict(r["control"], holds=True)))


def _holm_step_down(p, alpha):
    """Holm (1979) as stated: reject the smallest p-values while p_(i) <= alpha / (m - i)."""
    order = np.argsort(p)
    reject = np.zeros(len(p), bool)
    for i, j in enumerate(order):
        if p[j] <= alpha / (len(p) - i):
            reject[j] = True
        else:
            break
    return reject


def test_holm_by_hand():
    adj = findings.holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])


@pytest.mark.parametrize("seed", range(5))
def test_holm_adjusted_p_values_reject_what_the_step_down_procedure_rejects(seed):
    p = np.random.default_rng(seed).random(12) ** 3
    for alpha in (0.01, 0.025, 0.05, 0.2):
        assert np.array_equal(findings.holm_adjust(p) <= alpha, _holm_step_down(p, alpha))


def test_p_value_is_the_normal_approximation():
    from scipy.stats import norm

    reps = _reps(0.1, 0.05, n=4000)
    p = findings._one_sided_p(0.1, reps, 0.0, "above")
    assert p == pytest.approx(norm.sf(0.1 / reps.std(ddof=1)))


def test_findings_round_trip_with_holm(tmp_path, monkeypatch):
    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(tmp_path))
    arts = artefacts.Artefacts("demo", "tiny")
    recs = [_rec(0.20, 0.03, 0.0, 0.02), _rec(0.01, 0.05, 0.0, 0.02)]
    recs = [dict(r, finding=f, primary=True) for r, f in zip(recs, findings.family()[:2])]
    findings.write_findings(arts.findings("04_x"), recs, {"profile": "demo", "model_id": "tiny@abc"})
    df = findings.gather_findings()
    assert len(df) == 2 and set(df.family_size) == {2} and df.model[0] == "tiny@abc"
    assert df.holds_holm.tolist() == [True, False]
    table = findings.findings_table(df)
    assert {"finding − control (margin; control)", "after Holm"} <= set(table.columns)
    power = table["finding − control (margin; control)"].str.extract(r"; control (\w+)$")[0]
    assert set(power) <= {"powered", "underpowered", "degenerate"} and power.notna().all()
    json.loads(arts.findings("04_x").read_text())  # strict JSON
