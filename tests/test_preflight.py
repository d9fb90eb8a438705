"""``python -m helpers.bench.preflight`` against a complete and an incomplete fake full setup.

The fake full profile is the one of tests/test_full_profile.py: a tiny local-dir model built
from configs and generated PNGs named like Open-I's, for the images a ``-p limit 2`` run reads.
"""

import json
import shutil

import pytest

from helpers.bench import preflight as P

LIMIT = 2


@pytest.fixture(scope="module")
def fake_full(tmp_path_factory, data_env, label_table):
    from helpers.data.labels import CHEXPERT_LABELS
    from helpers.protocols.models import TinyConfig, build_tiny
    from helpers.phantoms.rendering import generate
    from helpers.book.study import subsample

    from helpers.data.iuxray import load_study_data

    root = tmp_path_factory.mktemp("preflight")
    texts = [c.lower() for c in CHEXPERT_LABELS] * 3
    model = build_tiny(root / "fake-model", texts, TinyConfig(vit_depth=1, bert_depth=1))
    split = subsample(load_study_data().split, LIMIT)
    generate(split, root / "openi", style="target", size=64, progress=False)
    return {"model": model, "images": root / "openi" / "images", "ids": list(split.image_id)}


def test_complete_setup_is_ready(fake_full, capsys):
    rc = P.main(["--profile", "full", "--model", f"local-dir:{fake_full['model']}",
                 "--image-dir", str(fake_full["images"]), "--limit", str(LIMIT)])
    out = capsys.readouterr().out
    assert rc == 0, out
    n = len(fake_full["ids"])
    assert f"{n} expected" in out and f"{n} found, {n} readable" in out and "0 missing" in out
    assert "M parameters" in out and "mean (" in out and "std (" in out
    assert "GiB free" in out and "Ready. Next:" in out
    # the exact next command: the model and limit as checked, the image folder linked in place
    cmd = out.split("Ready. Next:")[1].strip()
    assert "-m helpers.book.runner --profile full" in cmd
    assert f"-p model local-dir:{fake_full['model']}" in cmd and f"-p limit {LIMIT}" in cmd
    assert f"-p image_dir {fake_full['images'].resolve()}" in cmd


def test_folder_without_matching_ids(fake_full, tmp_path):
    (tmp_path / "IM-0001-1001.png").write_bytes((fake_full["images"] / f"{fake_full['ids'][0]}.png").read_bytes())
    c = P.check_images(fake_full["ids"], tmp_path)
    assert not c.ok and len(c.problems) == 1
    assert "no image in" in c.problems[0] and "matches the study's ids" in c.problems[0]
    assert "IM-0001-1001.png" in c.problems[0]


def test_missing_folder(fake_full, tmp_path):
    c = P.check_images(fake_full["ids"], tmp_path / "nope")
    assert c.problems == [f"image folder not found: {tmp_path / 'nope'}; fetch the Open-I PNGs "
                          f"with `python -m helpers.data.download` or pass --image-dir <folder of PNGs>"]


def test_missing_and_unreadable_images_are_named(fake_full, tmp_path):
    d = tmp_path / "images"
    shutil.copytree(fake_full["images"], d)
    ids = fake_full["ids"]
    (d / f"{ids[0]}.png").unlink()
    (d / f"{ids[1]}.png").write_bytes(b"not a png")
    c = P.check_images(ids, d, verify=0)
    assert len(c.problems) == 2
    assert f"1 of {len(ids)} study images missing" in c.problems[0] and f"{ids[0]}.png" in c.problems[0]
    assert "1 unreadable image(s)" in c.problems[1] and f"{ids[1]}.png" in c.problems[1]
    assert f"{len(ids) - 1} found, {len(ids) - 2} readable" in c.summary


def test_model_that_cannot_load(tmp_path):
    c, info = P.check_model(f"local-dir:{tmp_path / 'no-model'}")
    assert info is None and len(c.problems) == 1
    assert "cannot load" in c.problems[0] and str(tmp_path / "no-model") in c.problems[0]


def test_not_enough_disk(tmp_path, monkeypatch):
    need = P.disk_needed(3679, 224, 512, 196_000_000, "full")
    assert need["pixel cache"] == 3679 * 224 * 224
    assert need["fine-tuning checkpoints"] == 196_000_000 * P.CHECKPOINT_BYTES_PER_PARAM
    six = P.disk_needed(3679, 224, 512, 196_000_000, "full", finetune_runs=6)  # chapter 4: 3 seeds x 2
    assert six["fine-tuning checkpoints (6 runs)"] == 6 * need["fine-tuning checkpoints"]
    assert six["temporary copy (atomic writes)"] == need["fine-tuning checkpoints"]  # one file at a time
    monkeypatch.setattr(P.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 9, 1))
    c = P.check_disk(need, tmp_path / "not" / "yet")
    assert len(c.problems) == 1 and "not enough disk" in c.problems[0]
    assert "IUXRAY_DATA_DIR" in c.problems[0]


def test_incomplete_setup_exits_nonzero_with_one_message_each(fake_full, tmp_path, capsys):
    rc = P.main(["--profile", "full", "--model", f"local-dir:{tmp_path / 'no-model'}",
                 "--image-dir", str(tmp_path), "--limit", str(LIMIT)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "Not ready: 2 problem(s)." in out and "Ready. Next:" not in out
    assert "matches the study's ids" in out and "cannot load" in out


def test_expected_times_unknown_then_measured(tmp_path, monkeypatch):
    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(tmp_path))
    none = tmp_path / "no-benchmarks.json"  # the committed benchmark file may hold a full run
    assert "unknown" in P.time_check("full", none).summary
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "run_times.json").write_text(json.dumps(
        {"02_zero_shot": {"seconds": 120.0, "params": {"limit": 8}}}))
    s = P.time_check("full", none).summary
    assert "02_zero_shot 120s" in s and "04_fine_tune unknown" in s and "limit 8" in s


def test_demo_profile_is_quick_and_ready(data_env, label_table, capsys):
    assert P.main(["--limit", str(LIMIT)]) == 0
    out = capsys.readouterr().out
    assert "phantoms needed" in out and "tiny loads" in out
    assert out.rstrip().endswith(f"-m helpers.book.runner --profile demo -p limit {LIMIT}")
    assert "fine-tuning checkpoints (6 runs)" in out  # chapter 4's default: 3 seeds, real and permuted


def test_n_seeds_sizes_the_checkpoints_and_goes_into_the_command(data_env, label_table, capsys):
    assert P.main(["--limit", str(LIMIT), "--n-seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuning checkpoints (2 runs)" in out
    assert out.rstrip().endswith(f"-p limit {LIMIT} -p n_seeds 1")
    assert P.main(["--n-seeds", "0"]) == 2


def test_help_explains_every_option():
    text = P.parser().format_help()
    for opt in ("--profile", "--model", "--image-dir", "--limit", "--verify"):
        assert opt in text
    assert "(default: demo)" in text and "(default: 32)" in text and "openi/images" in text


def test_bad_arguments_exit_2(capsys):
    assert P.main(["--limit", "-1"]) == 2
    with pytest.raises(SystemExit) as e:
        P.main(["--profile", "nope"])
    assert e.value.code == 2


def test_gpu_line_reports_name_and_memory(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (70 * P.GIB, 80 * P.GIB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Fake H100")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    c = P.check_gpu("full")
    assert c.ok and not c.warnings and c.summary == "Fake H100: 70.0 GiB free of 80.0 GiB (1 device(s))"


def test_no_gpu_is_a_warning_for_full_only(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert P.check_gpu("full").warnings and P.check_gpu("full").ok
    assert not P.check_gpu("demo").warnings
