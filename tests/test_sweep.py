"""The fine-tuning budget sweep: successive halving by validation AUROC, and its record."""

import json

import pytest

from helpers.protocols import sweep


def test_configurations_cover_the_grid():
    confs = sweep.configurations({"objective": ("a", "b"), "lr": (1, 2, 3)})
    assert len(confs) == 6 and confs[0] == {"objective": "a", "lr": 1}
    assert {(c["objective"], c["lr"]) for c in confs} == {(o, l) for o in "ab" for l in (1, 2, 3)}


def test_survivors_keep_the_best_third_ties_by_order():
    assert sweep.survivors({0: 0.5, 1: 0.7, 2: 0.6, 3: 0.7, 4: 0.1, 5: 0.2}, eta=3) == [1, 3]
    assert sweep.survivors({7: 0.4}, eta=3) == [7]


def test_the_committed_record_is_complete_and_selected_on_validation():
    rec = sweep.read_record("demo")
    if rec is None:
        pytest.skip("no committed sweep record (python -m helpers.protocols.sweep writes it)")
    assert rec["patience"] < rec["max_epochs"] and not rec["quick"]
    assert {"command", "code_sha256", "data_hash", "wall_s", "configurations", "selected"} <= set(rec)
    confs = rec["configurations"]
    assert len(confs) == len(sweep.configurations({k: tuple(v) for k, v in rec["grid"].items()}))
    finished = [c for c in confs if c["rung_reached"] == len(rec["rungs"])]
    best = max(finished, key=lambda c: c["best_val_auroc"])
    assert (best["objective"], best["lr"]) == (rec["selected"]["objective"], rec["selected"]["lr"])
    assert "test" not in json.dumps(rec["selected"])  # selected on validation alone
    d = sweep.selected_defaults("demo", {"epochs": 3, "lr": 1.0, "batch_size": 32, "patience": 3})
    assert d["lr"] == rec["selected"]["lr"] and d["batch_size"] == 32


@pytest.mark.book
def test_a_slice_of_the_sweep_reproduces_its_ranking(data_env):
    """Re-run the first epoch of the recorded best and worst first-rung configurations: the
    same order, and validation AUROCs close to the recorded ones."""
    rec = sweep.read_record("demo")
    if rec is None:
        pytest.skip("no committed sweep record")
    first = [c for c in rec["configurations"] if c["curve"]]
    by_epoch1 = sorted(first, key=lambda c: c["curve"][0]["val_auroc"])
    lo, hi = by_epoch1[0], by_epoch1[-1]
    configs = [{"objective": c["objective"], "lr": c["lr"]} for c in (lo, hi)]
    again = sweep.run_sweep("demo", configs=configs, rungs=(1,), patience=rec["patience"],
                            max_epochs=rec["max_epochs"], progress=False)
    got = {(c["objective"], c["lr"]): c["curve"][0]["val_auroc"] for c in again["configurations"]}
    a, b = got[(lo["objective"], lo["lr"])], got[(hi["objective"], hi["lr"])]
    assert a < b
    assert a == pytest.approx(lo["curve"][0]["val_auroc"], abs=0.02)
    assert b == pytest.approx(hi["curve"][0]["val_auroc"], abs=0.02)
