"""One envelope: every result a chapter writes goes through ``artefacts.write_result`` and is
read back by ``artefacts.read_result``, which names the file and the chapter on every failure;
no chapter or helper parses a result JSON of its own."""

import ast
import json

import pytest

from helpers.book import artefacts as A
from helpers.config import REPO_ROOT

STAMP = {"profile": "demo", "model_id": "tiny@abc", "data_hash": "d", "date": "today"}


def test_round_trip_carries_the_envelope(tmp_path):
    path = A.write_result(tmp_path / "r.json", "metrics", STAMP, {"n_boot": 5}, setting="zs",
                          metrics={"auroc_macro": 0.6})
    got = A.read_result(path, "metrics", made_by="02_zero_shot")
    assert got["format"] == A.RESULT_FORMAT and got["kind"] == "metrics"
    assert got["stamp"] == STAMP and got["params"] == {"n_boot": 5}
    assert got["metrics"] == {"auroc_macro": 0.6}


@pytest.mark.parametrize("kind,stamp,payload,message", [
    ("metric", STAMP, {}, "result kind must be one of"),
    ("metrics", {"profile": "demo"}, {}, "lacks \\['model_id'\\]"),
    ("metrics", STAMP, {"format": 1}, "shadow the envelope"),
])
def test_bad_writes_are_refused_with_one_message(tmp_path, kind, stamp, payload, message):
    with pytest.raises(ValueError, match=message):
        A.write_result(tmp_path / "r.json", kind, stamp, **payload)
    assert not (tmp_path / "r.json").exists()


def test_every_bad_read_names_the_file_and_the_chapter(tmp_path):
    missing = tmp_path / "zero_shot.json"
    with pytest.raises(FileNotFoundError, match="zero_shot.json is missing; run 02_zero_shot"):
        A.read_result(missing, made_by="02_zero_shot")
    assert A.read_result(missing, missing_ok=True) is None
    broken = tmp_path / "broken.json"
    broken.write_text('{"stamp": ')
    with pytest.raises(ValueError, match="broken.json is not valid JSON.*run 05_embeddings"):
        A.read_result(broken, made_by="05_embeddings")
    index = tmp_path / "fine_tune_runs.json"
    index.write_text(json.dumps({"real": {"0": "runs/x"}}))
    with pytest.raises(ValueError, match="not a chapter result"):
        A.read_result(index)
    other = A.write_result(tmp_path / "g.json", "geometry", STAMP)
    with pytest.raises(ValueError, match="holds a 'geometry' result where a 'metrics'"):
        A.read_result(other, "metrics")


def test_results_written_before_the_envelope_are_still_read(tmp_path):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"stamp": STAMP, "findings": []}))
    assert A.read_result(old, "findings")["findings"] == []


def test_result_stamps_skip_indexes_and_manifests(tmp_path):
    A.write_result(tmp_path / "a.json", "metrics", STAMP)
    (tmp_path / "fine_tune_runs.json").write_text("{}")
    (tmp_path / "chapter_parameters.json").write_text('{"01_data": {}}')
    assert A.result_stamps(tmp_path) == [STAMP]


def test_no_chapter_or_helper_parses_a_result_file_itself():
    """Result files are named by ``Artefacts``; reading one with ``json.loads`` outside the
    envelope would bypass its checks. The notebooks import no ``json`` at all for results,
    and no helper reads an ``arts.metrics``/``reference``/``geometry``/``findings`` path
    with ``json``."""
    offenders = []
    for path in [*REPO_ROOT.glob("notebooks/[0-9]*.py"), *REPO_ROOT.glob("helpers/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("loads", "load")
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "json"):
                src = ast.unparse(node)
                if any(k in src for k in (".metrics(", ".reference", ".geometry", ".findings(",
                                          "grad_cam", "FINDINGS_GLOB")):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}: {src}")
    assert not offenders, offenders
