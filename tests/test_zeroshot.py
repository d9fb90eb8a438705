"""Zero-shot scoring and selection: probabilities, and no peeking at test labels."""

import numpy as np
import pytest

from helpers.protocols import zeroshot as Z


def test_paired_scores_is_softmax_over_pair():
    img = np.array([[1.0, 0.0]])
    pos, neg = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    p = Z.paired_scores(img, pos, neg, logit_scale=2.0)
    assert p[0, 0] == pytest.approx(np.exp(2) / (np.exp(2) + np.exp(0)))


@pytest.mark.parametrize("mode", Z.PROB_MODES)
def test_single_prompt_modes_are_probabilities(mode):
    rng = np.random.default_rng(0)
    s = Z.single_prompt_scores(rng.normal(size=(5, 8)), rng.normal(size=(3, 8)), 10.0, mode)
    assert s.shape == (5, 3) and (s >= 0).all() and (s <= 1).all()
    if mode == "softmax":
        assert np.allclose(s.sum(1), 1)
    if mode == "minmax":
        assert np.allclose(s.min(1), 0) and np.allclose(s.max(1), 1)


def test_unknown_mode_and_template_are_named():
    with pytest.raises(ValueError, match="'tanh'"):
        Z.single_prompt_scores(np.ones((1, 2)), np.ones((1, 2)), 1.0, "tanh")
    with pytest.raises(ValueError, match="'poem'"):
        Z.prompts("Cardiomegaly", "poem")


def test_selection_never_reads_test_labels():
    rng = np.random.default_rng(0)
    y = (rng.random((120, 4)) < 0.3).astype(int)
    cands = {"a": y * 0.3 + rng.random((120, 4)), "b": rng.random((120, 4)), "c": y * 0.8 + rng.random((120, 4))}
    val, test = np.arange(0, 60), np.arange(60, 120)
    name, thr = Z.select_on_val(cands, y, val)
    y2 = y.copy()
    y2[test] = rng.permutation(y2[test])  # shuffle test labels
    y2[test, 0] = 1 - y2[test, 0]
    name2, thr2 = Z.select_on_val(cands, y2, val)
    assert name == name2 == "c" and np.array_equal(thr, thr2)


def test_prompts_pair_up():
    pos, neg = Z.prompts("Cardiomegaly", "sentence", ensemble=True)
    assert len(pos) == len(neg) == len(Z.NAMES["Cardiomegaly"])
    assert all(n.startswith("there is no") for n in neg)
    pos, neg = Z.prompts("No Finding")
    assert pos and neg and pos != neg
