"""The ``full`` profile's code path, offline: a fake BiomedCLIP-architecture model folder and
generated PNGs named as Open-I names them, through chapters 2-7."""

import json
import shutil

import pytest

from helpers.book import runner as R
from helpers.config import data_dir

pytestmark = pytest.mark.book  # executes chapters 2-7 on the full profile's code path (minutes)


@pytest.fixture(scope="module")
def full_setup(tmp_path_factory, private_outputs):
    from helpers.data.iuxray import load_study_data
    from helpers.data.labels import CHEXPERT_LABELS
    from helpers.protocols.models import TinyConfig, build_tiny
    from helpers.phantoms.rendering import generate
    from helpers.book.study import subsample

    root = tmp_path_factory.mktemp("full")
    texts = [c.lower() for c in CHEXPERT_LABELS] + [f"no {c.lower()}" for c in CHEXPERT_LABELS]
    model = build_tiny(root / "fake-biomedclip", texts * 3, TinyConfig(vit_depth=1, bert_depth=1, image_size=224))
    split = subsample(load_study_data().split, 8)
    png = data_dir() / "openi"
    generate(split, png, style="target", size=256, progress=False)  # -> openi/images/<image id>.png
    ann = root / "annotations.csv"
    rows = [f'{i},Cardiomegaly,box,"60,120;200,220"' for i in split.image_id[split.split != "train"]]
    ann.write_text("image_id,label,shape,points\n" + "\n".join(rows) + "\n")
    yield model, ann
    shutil.rmtree(png / "images", ignore_errors=True)


def test_full_profile_chapters_run_offline(full_setup, tmp_path, capsys):
    model, ann = full_setup
    chapters = ["02_zero_shot", "03_linear_probe", "04_fine_tune", "05_embeddings", "06_grad_cam",
                "06b_sanity", "07_results"]
    args = ["--profile", "full", "--out", str(tmp_path)]
    for k, v in {"model": f"local-dir:{model}", "limit": "8", "n_boot": "5", "epochs": "1",
                 "max_steps_per_epoch": "1", "batch_size": "4", "annotations": str(ann), "n_examples": "1",
                 "max_pairs": "10", "projection_points": "20", "n_seeds": "1"}.items():
        args += ["-p", k, v]
    rc = R.main([*chapters, *args])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 0, "\n".join(errors)  # the runner's one line: chapter, error, failed copy
    for c in chapters:
        nb = json.loads((tmp_path / f"{c}.ipynb").read_text())
        assert not [o for cell in nb["cells"] for o in cell.get("outputs", []) if o.get("output_type") == "error"], c
    from helpers.book.results import gather

    df = gather()
    assert {"full"} <= set(df.profile)
    assert set(df[df.profile == "full"].setting) == {"zs", "zs-seed", "lp", "ft", "ft-lpft", "ft-seed"}
    from helpers.book.artefacts import Artefacts

    stamp = json.loads(Artefacts.of("full", f"local-dir:{model}", quick=True).metrics("zs").read_text())["stamp"]
    assert stamp["profile"] == "full" and stamp["model_id"].startswith("local-dir:")
