"""The papermill runner: parameter checking happens before anything executes."""

import pytest

from helpers import run as R


def test_toc_order_starts_with_data_chapter():
    chapters = R.toc_chapters()
    assert chapters[0] == "01_data"
    for c in chapters:
        assert R.notebook_path(c).exists()


def test_declared_parameters_of_chapter_1():
    params = R.declared_parameters(R.read_notebook(R.notebook_path("01_data")))
    assert params["profile"].default == "demo"
    assert params["split_seed"].default == 0
    assert params["split_fractions"].default == [0.7, 0.1, 0.2]
    assert "U-Ones" in params["uncertain_policy"].comment


def test_unknown_parameter_is_named_with_valid_ones(capsys):
    rc = R.main(["01_data", "-p", "n_exmaples", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'n_exmaples'" in err and "n_examples" in err and "split_seed" in err


def test_wrong_type_is_named(capsys):
    rc = R.main(["01_data", "-p", "split_seed", "zero"])
    err = capsys.readouterr().err
    assert rc == 2 and "'split_seed'" in err and "int" in err


def test_unknown_profile_lists_valid_ones(capsys):
    rc = R.main(["01_data", "--profile", "fast"])
    err = capsys.readouterr().err
    assert rc == 2 and "'fast'" in err and "demo" in err and "full" in err


def test_unknown_chapter_lists_chapters(capsys):
    rc = R.main(["99_nothing"])
    err = capsys.readouterr().err
    assert rc == 2 and "01_data" in err


@pytest.mark.parametrize("default,raw,expected", [
    (3, "4", 4), (0.5, "1e-3", 1e-3), (True, "false", False), ("a", "b", "b"),
    ([0.7, 0.1, 0.2], "[0.8, 0.1, 0.1]", [0.8, 0.1, 0.1]), (["frontal"], "PA,AP", ["PA", "AP"]),
])
def test_coerce(default, raw, expected):
    assert R.coerce(R.Param("x", default, ""), raw) == expected


def test_resolve_gives_profile_to_every_chapter():
    out = R.resolve_parameters(["01_data"], [("n_examples", "1")], "full")
    assert out == {"01_data": {"profile": "full", "n_examples": 1}}
