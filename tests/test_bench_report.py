"""The benchmark page's tables (helpers/bench/report.py) from a results file with a CPU entry
(the committed one) and a synthetic GPU entry: every device appears under its own name, and a
table no device measured is empty (the page then says what it waits for)."""

import copy
import json

import pytest

from helpers.bench import report
from helpers.config import REPO_ROOT


@pytest.fixture
def devices():
    cpu_key, cpu = next(iter(report.load_devices(REPO_ROOT / "benchmarks/results.json").items()))
    cpu.pop("full_profile_run", None)  # the synthetic GPU entry has one; the CPU has none here
    gpu = copy.deepcopy(cpu)
    gpu["machine"] = {**gpu["machine"], "device": "cuda"}
    gpu["bare_forward_biomedclip_size"] = {"autocast": {"img_per_s": 8600.0}}
    gpu["finetune_e2e"] = {"runs": {"32": {
        "wall_min": 1.2, "speedup_vs_seed_reported": 12.9, "epoch_s_median": 2.3,
        "first_epoch_s": 9.0, "peak_mem_GB": 21.0, "fast_path": {"compile": "compiled"},
        "val_auroc": [0.5, 0.6]}}}
    gpu["embedding_biomedclip_size"]["variants"] = {"auto": {
        "img_per_s": 10400.0, "speedup_warm": 140.0, "max_rel_diff": 1e-3}}
    gpu["full_profile_run"] = {
        "label": "full-profile run at scale", "total_s": 600.0, "peak_rss_mib": 4096.0,
        "complete": True, "chapters": {"01_data": {
            "seconds": 30.0, "peak_rss_mib": 900.0, "peak_gpu_used_mib": 100.0,
            "date": "2026-11-25"}},
        "conditions": {"gpu": True, "limit_per_split": 0, "memory": "RSS of the process tree",
                       "model": {"n_params": 195.7e6, "weights": "random"},
                       "images": {"n_png": 7470, "what": "phantoms", "png_px": [512, 512]},
                       "params": {"profile": "full", "n_seeds": 3}, "omp_num_threads": None}}
    return {cpu_key: cpu, "cuda: NVIDIA H100": gpu}


def test_every_device_is_a_row_of_the_machines_table(devices):
    assert list(report.machines(devices).index) == list(devices)
    assert report.gpu_names(devices) == ["cuda: NVIDIA H100"]


def test_embedding_rates_are_kept_per_device_and_the_best_vitb_rate_is_per_device(devices):
    emb = report.embedding(devices)
    assert set(emb.index.get_level_values("device")) == set(devices)
    best = report.best_vitb_rate(emb)
    assert best["cuda: NVIDIA H100"] == 10400.0 and set(best) == set(devices)


def test_gpu_only_tables_name_the_gpu_and_are_empty_without_one(devices):
    e2e = report.finetune_end_to_end(devices)
    assert list(e2e.index) == [("cuda: NVIDIA H100", "32")] and e2e.iloc[0]["minutes"] == 1.2
    assert len(report.bare_forward(devices)) == 1
    cpu_only = {k: v for k, v in devices.items() if not k.startswith("cuda")}
    assert report.finetune_end_to_end(cpu_only).empty
    assert report.bare_forward(cpu_only).empty
    assert report.full_runs(cpu_only) == {}


def test_full_run_tables_and_summary_state_their_conditions(devices):
    runs = report.full_runs(devices)
    cond = report.full_run_conditions(runs)["cuda: NVIDIA H100"]
    assert cond["limit (images per split)"] == "none (every image)" and cond["weights"] == "random"
    assert cond["other parameters"] == "n_seeds 3" and cond["OMP_NUM_THREADS"] == "unknown"
    chapters = report.full_run_chapters(runs)
    assert chapters.loc[("cuda: NVIDIA H100", "01_data"), "seconds"] == 30.0
    text = report.full_run_summary("cuda: NVIDIA H100", runs["cuda: NVIDIA H100"])
    assert "10.0 min over 1 chapters" in text and "4.0 GiB" in text


def test_book_times_say_whether_every_chapter_was_timed(devices):
    key = next(iter(devices))
    devices[key]["book"] = {"chapters_s": {"01_data": 30.0, "02_zero_shot": 90.0},
                            "total_s": 120.0, "complete": False}
    table, total, complete = report.book_times(devices)
    assert list(table.index) == ["01_data", "02_zero_shot"] and total == 120.0 and not complete
    empty, total, complete = report.book_times({})
    assert empty.empty and total is None and not complete


def test_old_single_device_file_is_one_device(tmp_path):
    f = tmp_path / "old.json"
    f.write_text(json.dumps({"machine": {"device": "cpu", "cpu_count": 2}}))
    assert list(report.load_devices(f)) == ["cpu (2 cores)"]
    with pytest.raises(FileNotFoundError, match="make bench"):
        report.load_devices(tmp_path / "missing.json")
