"""``python -m helpers.bench.at_scale``: boxes from phantom masks, the memory sampler, the benchmark
record of a full-profile run and what preflight reads back from it (no timing assertions)."""

import json
import sys

import numpy as np
import pandas as pd

from helpers.bench import at_scale as BF
from helpers.data.labels import CHEXPERT_LABELS
from helpers.phantoms.rendering import LABEL_BIT


def _bits(shape=(64, 80)) -> np.ndarray:
    bits = np.zeros(shape, np.uint16)
    card, eff = 1 << LABEL_BIT["Cardiomegaly"], 1 << LABEL_BIT["Pleural Effusion"]
    bits[10:20, 5:15] |= card
    bits[40:50, 60:70] |= card  # a second region of the same finding
    bits[0:2, 0:2] |= card  # 4 pixels: below MIN_REGION_PX
    bits[30:40, 30:50] |= eff
    return bits


def test_mask_boxes_one_box_per_region_in_png_pixels():
    boxes = BF.mask_boxes(_bits(), ["Cardiomegaly", "Pleural Effusion", "Edema"])
    assert sorted(boxes) == [("Cardiomegaly", "5,10;14,19"), ("Cardiomegaly", "60,40;69,49"),
                             ("Pleural Effusion", "30,30;49,39")]


def test_phantom_annotations_cover_positive_val_and_test_findings(tmp_path):
    import cv2

    from helpers.data.annotations import load_annotations, region_mask

    ids = ["a", "b", "c"]
    split = pd.DataFrame({"image_id": ids, "split": ["train", "val", "test"]})
    for c in CHEXPERT_LABELS:
        split[c] = 0
    split.loc[:, "Cardiomegaly"] = 1
    split.loc[2, "Pleural Effusion"] = 1
    (tmp_path / "masks").mkdir()
    for i in ids:
        cv2.imwrite(str(tmp_path / "masks" / f"{i}.png"), _bits())
    n = BF.phantom_annotations(split, tmp_path / "masks", tmp_path / "ann.csv")
    ann = load_annotations(tmp_path / "ann.csv")  # the format chapter 6 reads
    assert n == len(ann) == 2 + 3 and set(ann.image_id) == {"b", "c"}  # train left out
    assert set(ann[ann.image_id == "b"].label) == {"Cardiomegaly"}  # negative findings left out
    png = tmp_path / "c.png"
    cv2.imwrite(str(png), np.zeros((64, 80), np.uint8))
    assert region_mask(ann, "c", "Pleural Effusion", png, 32).any()


def test_measure_reports_exit_status_and_peak_memory(monkeypatch):
    code = "b = b'x' * (120 * 2 ** 20); import time; time.sleep(1.0)"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    m = BF.measure([sys.executable, "-c", code], interval=0.05)
    assert m["rc"] == 0 and m["peak_rss_mib"] >= 100 and m["load_avg_1min_start"] >= 0
    assert m["omp_num_threads"] == "3"
    assert BF.measure([sys.executable, "-c", "raise SystemExit(3)"], interval=0.05)["rc"] == 3


def test_each_chapter_gets_only_the_parameters_it_declares():
    p = [("limit", "40"), ("results", "benchmarks/results.json"), ("model", "local-dir:/m")]
    assert BF._declared("08_benchmarks", p) == ["-p", "results", "benchmarks/results.json"]
    assert BF._declared("02_zero_shot", p) == ["-p", "limit", "40", "-p", "model", "local-dir:/m"]


def _fake_run(out_dir, chapters):
    t = {c: {"seconds": 10.0 * (k + 1), "params": {"profile": "full", "limit": 40, "model": "local-dir:/x"},
             "cores": 2, "date": "2026-01-01 00:00 UTC"} for k, c in enumerate(chapters)}
    p = {c: {"rc": 0, "wall_s": 12.0, "peak_rss_mib": 100.0 * (k + 1), "peak_gpu_used_mib": None,
             "sample_interval_s": 0.5, "omp_num_threads": "1"} for k, c in enumerate(chapters)}
    (out_dir / "full").mkdir(parents=True)
    (out_dir / "full" / "run_times.json").write_text(json.dumps(t))
    (out_dir / "full" / "run_peaks.json").write_text(json.dumps(p))


def test_record_goes_into_this_devices_entry_and_preflight_reads_it(tmp_path, monkeypatch):
    import torch

    from helpers.bench import preflight as P
    from helpers.bench.timing import device_key

    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("IUXRAY_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "results.json"
    key = device_key(torch.device("cpu"))
    out.write_text(json.dumps({"format": 2, "latest": key, "devices": {
        key: {"machine": {"key": key}, "probe_fit": {"kept": 1}}, "cuda: X": {"kept": True}}}))
    assert BF.main(["record", "--out", str(out)]) == 1  # no run yet: one message, no traceback
    _fake_run(tmp_path / "outputs", ["02_zero_shot", "03_linear_probe"])
    rec = BF.record(out)
    data = json.loads(out.read_text())
    assert data["devices"]["cuda: X"] == {"kept": True} and data["devices"][key]["probe_fit"] == {"kept": 1}
    assert data["devices"][key]["full_profile_run"] == rec
    assert rec["label"] == "full-profile run at scale (CPU, reduced limit)" and not rec["complete"]
    assert rec["conditions"]["limit_per_split"] == 40 and rec["conditions"]["gpu"] is False
    assert rec["conditions"]["omp_num_threads"] == ["1"]  # as the run had it, not the recording shell
    assert rec["chapters_s"] == {"02_zero_shot": 10.0, "03_linear_probe": 20.0} and rec["peak_rss_mib"] == 200.0
    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(tmp_path / "elsewhere"))  # no run_times.json here
    s = P.time_check("full", out).summary
    assert "02_zero_shot 10s" in s and "reduced limit); -p limit 40" in s and "04_fine_tune unknown" in s
    assert "unknown" in P.time_check("full", tmp_path / "none.json").summary


def test_a_resumed_run_of_some_chapters_keeps_the_others_peaks(tmp_path, monkeypatch):
    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(tmp_path))
    _fake_run(tmp_path, ["01_data", "06_grad_cam"])
    monkeypatch.setattr(BF, "measure", lambda cmd, interval: {"rc": 0, "peak_rss_mib": 7.0})
    peaks = BF.run([("limit", "40")], chapters=["06_grad_cam"])
    assert peaks["01_data"]["peak_rss_mib"] == 100.0  # kept from the first run
    assert peaks["06_grad_cam"]["peak_rss_mib"] == 7.0  # measured again
    saved = json.loads((tmp_path / "full" / "run_peaks.json").read_text())
    assert saved == peaks
