"""Chapter 6's two pages share their machinery through helpers: the per-pair hits handed from
the first page to the second (refused for other pairs), the probe folds put back in pair order,
the sanity verdicts' paired difference against a direct computation, the off-prior bar, and
the sentences that read the verdicts (every branch)."""

import numpy as np
import pandas as pd
import pytest

from helpers.analysis.estimate import Estimate
from helpers.analysis import findings
from helpers.book.study import LocPairs
from helpers.saliency import sanity, settings
from helpers.saliency.explain import Explained


def pairs(n=6, seed=0, labels=("Edema", "Nodule")):
    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"row": np.arange(n), "image_id": [f"i{k // 2}" for k in range(n)],
                          "report_id": [f"r{k // 2}" for k in range(n)],
                          "label": [labels[k % len(labels)] for k in range(n)],
                          "split": "test"})
    return LocPairs(table, rng.random((n, 8, 8)) < 0.3)


def fake_settings(scored):
    return settings.CamSettings(
        study=None, scorers={"zs": None, "ft": None}, controls={"ft-permuted": None},
        names={"zs": "zero-shot (x)", "ft": "fine-tuned", "ft-permuted": "permuted"},
        pixels={}, scored={"zs": scored, "ft": scored, "ft-permuted": scored}, tune=scored,
        prior=None, control=None, zs_name="x", layers={"zs": 3, "ft": 3, "ft-permuted": 3},
        grid=4)


def summary(hit):
    return {"per_pair": {"hit_rate": np.asarray(hit, float)}}


def test_hits_round_trip_and_are_refused_for_other_pairs(tmp_path):
    p = pairs()
    cs = fake_settings(p)
    rng = np.random.default_rng(1)
    hits = {k: rng.random(len(p)) for k in cs.keys()}
    every = settings.EverySetting({(k, "gradcam"): summary(h) for k, h in hits.items()}, {}, {})
    refs = {"location prior": summary(rng.random(len(p)))}
    path = settings.save_hits(tmp_path / "hits.npz", cs, every, refs)
    got, got_refs = settings.load_hits(path, cs)
    for k in cs.keys():
        assert np.array_equal(got[k], hits[k])
    assert np.array_equal(got_refs["location prior"], refs["location prior"]["per_pair"]["hit_rate"])
    other = fake_settings(pairs(seed=0, labels=("Nodule", "Edema")))  # same images, other labels
    with pytest.raises(ValueError, match="other pairs.*re-run 06_grad_cam"):
        settings.load_hits(path, other)
    with pytest.raises(FileNotFoundError, match="06_grad_cam"):
        settings.load_hits(tmp_path / "missing.npz", cs)


def test_folds_are_put_back_in_pair_order():
    hit = np.arange(10.0)
    small = np.arange(10.0)[:, None, None] * np.ones((1, 2, 2))
    folds = [np.array([7, 2, 9]), np.array([0, 5]), np.array([1, 3, 4, 6, 8])]
    parts = [(idx, Explained({"gradcam": {"hit": hit[idx]}}, small={"gradcam": small[idx]}))
             for idx in folds]
    joined = settings._in_pair_order(parts)
    assert np.array_equal(joined.stats["gradcam"]["hit"], hit)
    assert np.array_equal(joined.small["gradcam"], small)
    assert settings._in_pair_order([]).stats == {}


def test_versus_is_the_paired_mean_difference_against_its_control():
    p = pairs(n=40, seed=3)
    rng = np.random.default_rng(4)
    a, b, c, d = (rng.random(len(p)) for _ in range(4))
    test = sanity.versus(a, b, c, d, p, n_boot=50)
    assert test.finding[0] == pytest.approx(np.mean(a - b))
    assert test.control[0] == pytest.approx(np.mean(c - d))
    assert test.difference[0] == pytest.approx(np.mean(a - b) - np.mean(c - d))
    constant = sanity.versus(a, a, c, c, p, n_boot=50)  # a finding of exactly zero
    assert constant.finding[0] == 0 and np.all(constant.finding[1] == 0)


def test_the_off_prior_bar_is_the_better_of_prior_and_chance():
    scores = sanity.OffPriorScores(off=None, hits={}, randomised={},
                                   prior_hit=np.array([0.0, 1.0, 0.0, 0.5]),
                                   chance=np.array([0.1, 0.2, 0.0, 0.7]), maps=np.zeros(0))
    assert np.array_equal(scores.bar, [0.1, 1.0, 0.0, 0.7])


def record_with(estimate, ci, finding="ft: data randomisation"):
    rec = findings.record(finding, sanity.CHAPTER, "claim",
                          findings.from_values((estimate, ci), (0.0, [-0.01, 0.01])),
                          {"above": 0.0}, "control")
    return rec


@pytest.mark.parametrize("ci,words", [([-0.2, -0.05], "more"), ([0.05, 0.2], "less often"),
                                      ([-0.05, 0.05], "cannot be told apart")])
def test_data_randomisation_is_read_in_the_direction_of_its_interval(ci, words):
    text = sanity.data_randomisation_reading([record_with(float(np.mean(ci)), ci)])
    assert words in text
    assert sanity.data_randomisation_reading([]).startswith("Not tested")


def test_control_reading_names_each_case():
    p = pairs()
    cs = fake_settings(p)
    assert "no positive control" in sanity.control_reading([], cs, None)
    good = record_with(0.3, [0.2, 0.4], "control: beats the location prior")
    assert good["holds"] and "can show localisation" in sanity.control_reading([good], cs, None)
    bad = record_with(0.01, [-0.05, 0.06], "control: beats the location prior")
    assert not bad["holds"] and "say nothing" in sanity.control_reading([bad], cs, None)


def test_verdict_text_says_why_a_finding_was_not_tested():
    assert sanity.verdict_text([], "ft: model randomisation", True).startswith("not tested: a")
    assert sanity.verdict_text([], "ft: model randomisation") == "not tested in this profile"
    rec = record_with(0.1, [0.05, 0.15], "ft: model randomisation")
    assert sanity.verdict_text([rec], "ft: model randomisation").startswith(rec["verdict"])


def test_the_grid_check_says_when_it_fails():
    ok = {"draws": 20, "hit": 0.05, "chance": 0.05,
          "difference": Estimate(0.0, -0.01, 0.01), "consistent": True}
    assert settings.grid_check_text(ok).endswith("the level is confirmed")
    bad = dict(ok, difference=Estimate(-0.03, -0.05, -0.01), consistent=False)
    assert "this check fails" in settings.grid_check_text(bad)


@pytest.mark.parametrize("shares,words", [([1.0, 1.0], "one control, not two"),
                                          ([0.95, 1.0], "nearly one control"),
                                          ([0.5, 0.6], "two controls")])
def test_copies_alike_reading_follows_the_shares(shares, words):
    text = sanity.copies_alike_reading(shares, "lp-ft")
    assert words in text and "LP-FT" in text and f"each of {len(shares)} seeds" in text
    assert "objective bce" in sanity.copies_alike_reading(shares, "bce")
