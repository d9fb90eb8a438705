"""The one estimate-with-interval type: construction, both stored layouts, formatting, and
that every producer of an interval in the helpers hands one back."""

import json
import math

import numpy as np
import pytest

from helpers.analysis import findings, geometry, metrics
from helpers.analysis.estimate import Estimate, fmt_ci, frame_columns, table_record
from helpers.saliency import regions


def test_missing_and_non_finite_values_become_none():
    e = Estimate.of(float("nan"), [float("-inf"), 0.2])
    assert e.value is None and e.low is None and e.high == 0.2
    assert not e.has_interval and e.half_width is None
    assert e.format() == "–" and Estimate.of(0.1, [None, 0.2]).format() == "0.100"
    assert Estimate.of(np.float64(0.5), np.array([0.4, 0.6])) == Estimate(0.5, 0.4, 0.6)
    with pytest.raises(ValueError, match=r"\[low, high\]"):
        Estimate.of(0.5, [0.1, 0.2, 0.3])


def test_comparisons_need_a_whole_interval():
    e = Estimate(0.3, 0.1, 0.5)
    assert e.above(0.05) and not e.above(0.1) and e.below(0.6) and not e.below(0.5)
    assert e.contains(0.1) and e.contains(0.5) and not e.contains(0.51)
    no_ci = Estimate(0.3)
    assert not (no_ci.above(0) or no_ci.below(1) or no_ci.contains(0.3))
    assert e.half_width == pytest.approx(0.2)


@pytest.mark.parametrize("value,ci,digits,signed", [
    (0.2834, [0.259, 0.3041], 3, False), (-0.0123, [-0.05, 0.021], 3, True),
    (1.5061, [1.41, 1.6], 2, False), (0.5, None, 3, False), (None, [0.1, 0.2], 3, False)])
def test_format_is_the_book_cell(value, ci, digits, signed):
    assert Estimate.of(value, ci).format(digits, signed) == fmt_ci(value, ci, digits, signed)


def test_error_bars_are_never_negative():
    # a percentile interval need not contain its estimate (a tiny or skewed sample)
    assert Estimate(0.3, 0.35, 0.5).error_bar() == (0.0, pytest.approx(0.2))
    assert Estimate(0.3, 0.1, 0.25).error_bar() == (pytest.approx(0.2), 0.0)
    assert Estimate(0.3).error_bar() == (0.0, 0.0)


def test_both_stored_layouts_round_trip_through_json():
    single = Estimate(0.026, 0.008, 0.045)
    assert Estimate.read(json.loads(json.dumps(single.record()))) == single
    table = {"lrap": Estimate(0.61, 0.58, 0.64), "auroc_macro": Estimate(0.55, 0.5, 0.6),
             "n_missing": Estimate(None)}
    stored = json.loads(json.dumps(table_record(table)))
    assert stored["lrap"] == 0.61 and stored["ci95"]["auroc_macro"] == [0.5, 0.6]
    assert "n_missing" not in stored["ci95"]
    assert {k: Estimate.read(stored, k) for k in table} == table


def test_reading_the_wrong_layout_says_so():
    with pytest.raises(KeyError, match="no 'estimate' key"):
        Estimate.read({"lrap": 0.6, "ci95": {"lrap": [0.5, 0.7]}})
    with pytest.raises(TypeError, match="single estimate"):
        Estimate.read({"estimate": 0.6, "ci95": [0.5, 0.7]}, "estimate")
    with pytest.raises(ValueError, match="'ci95' cannot name"):
        table_record({"ci95": Estimate(0.1)})
    with pytest.raises(ValueError, match="differ in length"):
        Estimate.each([0.1, 0.2], [0.0], [0.3, 0.4])


def test_every_interval_producer_returns_or_stores_the_type():
    """metrics (one statistic, a paired difference, the headline table), geometry, the
    localisation summary and a finding record: all read back as Estimates whose interval
    contains the point (means of well-spread data)."""
    rng = np.random.default_rng(0)
    x, groups = rng.random(60), np.repeat(np.arange(30), 2)
    one = metrics.bootstrap_stat(lambda i: float(x[i].mean()), groups, n_boot=100)
    diff = metrics.paired_difference(lambda i: float(x[i].mean()),
                                     lambda i: float(x[i].mean() / 2), groups, n_boot=100)
    gain = regions.paired_gain(x, x / 2, groups, n_boot=100)
    assert isinstance(one, Estimate) and one.contains(float(x.mean()))
    assert diff == gain and diff.above(0)
    assert regions.paired_gain([], [], [], n_boot=10) == Estimate(None)

    y = (rng.random((60, 3)) < 0.4).astype(int)
    s = y + rng.normal(size=(60, 3))
    res = metrics.evaluate(y, s, 0.5, ["a", "b", "c"], groups, n_boot=50)
    auroc = Estimate.read(res, "auroc_macro")
    assert auroc.value == res["auroc_macro"] and auroc.ci == res["ci95"]["auroc_macro"]

    geo = geometry.geometry_with_ci(y @ rng.normal(size=(3, 4)) * 3 + rng.normal(size=(60, 4)),
                                    y, groups, ["a", "b", "c"], n_boot=30, min_count=2)
    assert all(Estimate.read(geo, k).has_interval for k in ("inter", "intra", "ratio"))

    rec = findings.record("exploratory check", "test", "x exceeds half of x",
                          findings.compare(lambda i: float(x[i].mean()),
                                           lambda i: float(x[i].mean() / 2), groups, 100),
                          {"above": 0.0}, "half of x", margin=0.01)
    for part in (rec, rec["control"], rec["difference"]):
        e = Estimate.read(part)
        assert e.has_interval and math.isfinite(e.value)
    assert Estimate.read(rec["difference"]) == Estimate.of(rec["difference"]["estimate"],
                                                           rec["difference"]["ci95"])


def test_a_data_frame_holds_an_estimate_in_three_numeric_columns():
    import pandas as pd

    rows = [frame_columns("auroc", Estimate(0.7, 0.6, 0.8)),
            frame_columns("auroc", Estimate(None))]
    df = pd.DataFrame(rows)
    assert all(df[c].dtype == float for c in ("auroc", "auroc_lo", "auroc_hi"))
    assert Estimate.from_row(df.iloc[0], "auroc") == Estimate(0.7, 0.6, 0.8)
    assert Estimate.from_row(df.iloc[1], "auroc") == Estimate(None)
    assert Estimate.from_row({"auroc": 0.7}, "auroc") == Estimate(0.7)  # no interval columns


def test_the_cascade_is_stored_in_the_table_layout():
    from helpers.saliency.sanity import cascade_row

    row = {"setting": "ft", "step": "trained", "method": "gradcam", "n_defined": 5,
           **frame_columns("spearman", Estimate(0.9, 0.8, float("nan")))}
    stored = json.loads(json.dumps(cascade_row(row)))
    assert stored["setting"] == "ft" and "spearman_lo" not in stored
    assert Estimate.read(stored, "spearman") == Estimate(0.9, 0.8, None)


@pytest.mark.parametrize("e,signed,digits,cell", [
    (Estimate(0.2834, 0.259, 0.3041), False, 3, "0.283 [0.259, 0.304]"),
    (Estimate(0.0123, -0.0049, 0.0301), True, 3, "+0.012 [-0.005, +0.030]"),
    (Estimate(1.5061, 1.41, None), False, 2, "1.51"),
    (Estimate(None, 0.1, 0.2), False, 3, "–")])
def test_the_cell_a_page_prints(e, signed, digits, cell):
    assert e.format(digits, signed) == cell


def test_a_file_in_the_old_layout_is_refused_not_read_without_its_interval():
    with pytest.raises(ValueError, match="re-run the chapter"):
        Estimate.read({"ratio": 1.2, "ratio_ci": [1.1, 1.3]}, "ratio")


def test_degenerate_inputs_store_missing_estimates_that_still_format():
    """No pair to score and one class to measure: the values are missing (None), the cells
    print "–", and arithmetic through ``number`` gives NaN instead of an error."""
    empty = regions.summarise(regions.concat_stats([]), regions.tune_thresholds(
        regions.concat_stats([]), [], [], [], []), [], [], n_boot=5)
    hit = Estimate.read(empty, "hit_rate")
    assert hit == Estimate(None) and hit.format() == "–" and math.isnan(hit.number)
    y = np.zeros((40, 2), int)
    y[:20, 0] = 1  # one class with members: no inter-class distance
    geo = geometry.geometry_with_ci(np.random.default_rng(0).normal(size=(40, 3)), y,
                                    np.arange(40), ["a", "b"], n_boot=10)
    assert Estimate.read(geo, "ratio").value is None
    assert json.loads(json.dumps(geo))["ratio"] is None  # valid JSON, no NaN


def test_the_results_table_carries_stored_intervals(private_outputs):
    from helpers.book import artefacts, results

    arts = artefacts.Artefacts.of("demo")
    stamp = {"profile": "demo", "model_id": "tiny@abc", "data_hash": "h", "date": "d"}
    stored = table_record({"auroc_macro": Estimate(0.7, 0.6, 0.8), "lrap": Estimate(0.5)})
    metrics.write_metrics(arts.metrics("zs"), "zs", stored, {}, stamp)
    row = results.gather().set_index("setting").loc["zs"]
    assert Estimate.from_row(row, "auroc_macro") == Estimate(0.7, 0.6, 0.8)
    assert Estimate.from_row(row, "lrap") == Estimate(0.5)
    cells = results.results_table(results.gather(), None, ["auroc_macro"])
    assert "0.700 [0.600, 0.800]" in cells.to_string()
