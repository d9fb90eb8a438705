"""The benchmark runs in smoke mode and writes its JSON (no timing assertions)."""

import json

from helpers import bench as B


def test_bench_smoke_writes_results(tmp_path, data_env):
    out = tmp_path / "results.json"
    B.run(smoke=True, out=out)
    r = json.loads(out.read_text())
    assert r["smoke"] is True and r["machine"]["cpu_count"] >= 1
    e = r["embedding_tiny"]
    assert e["n_images"] == 16 and e["seed_s"] > 0 and e["ours_warm_s"] > 0
    assert e["max_abs_diff"] < 1e-3  # the seed's loop and ours compute the same embeddings
    assert r["finetune_tiny"]["ours_step_s"] > 0 and r["finetune_tiny"]["seed_step_s"] > 0
    assert r["profile_tiny_step"] and {"op", "self_cpu_ms", "share"} <= set(r["profile_tiny_step"][0])
    assert r["probe_fit"]["96"]["fit_s"] > 0
