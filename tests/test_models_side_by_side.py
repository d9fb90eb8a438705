"""Two models run on one profile keep separate outputs, and the results page shows both."""

import json

import pytest

from helpers.book import artefacts, results
from helpers.book import runner

pytestmark = pytest.mark.book  # executes chapters 2 (twice) and 7


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, private_outputs):
    from helpers.data.labels import CHEXPERT_LABELS
    from helpers.protocols.models import TinyConfig, build_tiny

    root = tmp_path_factory.mktemp("models")
    texts = [c.lower() for c in CHEXPERT_LABELS] + [f"no {c.lower()}" for c in CHEXPERT_LABELS]
    small = TinyConfig(vit_depth=1, bert_depth=1)
    a = build_tiny(root / "model-a", texts * 3, small, seed=1)
    b = build_tiny(root / "other" / "model-b", texts * 3, small, seed=2)
    return a, b


def test_two_models_outputs_coexist_and_both_appear(two_models, tmp_path):
    a, b = (f"local-dir:{m}" for m in two_models)
    for spec in (a, b):
        rc = runner.main(["02_zero_shot", "--out", str(tmp_path), "-p", "model", spec,
                          "-p", "limit", "8", "-p", "n_boot", "5"])
        assert rc == 0
    dirs = {artefacts.Artefacts.of("demo", s, quick=True).dir for s in (a, b)}  # limited: quick/
    assert len(dirs) == 2 and all((d / "zero_shot.json").is_file() for d in dirs)
    specs = {json.loads((d / "zero_shot.json").read_text())["params"]["model"] for d in dirs}
    assert specs == {a, b}  # the second run did not overwrite the first
    assert runner.main(["07_results", "--out", str(tmp_path)]) == 0
    html = json.dumps(json.loads((tmp_path / "07_results.ipynb").read_text()))
    table = results.gather()
    ids = set(table[table.setting == "zs"].model_id)
    assert sum(i.startswith(a) for i in ids) == 1 and sum(i.startswith(b) for i in ids) == 1
    side = results.models_side_by_side(table)
    assert sum(r.startswith("demo · ") for r in side.index) >= 2  # one row per run
    for spec in (a, b):
        assert spec in html  # both models named on the page
