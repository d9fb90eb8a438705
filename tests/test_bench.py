"""The benchmark runs in smoke mode and writes its JSON per device (no timing assertions); its CLI
reports expected failures in one message; the embedding path it times equals the earlier one."""

import json

import pytest

from helpers.bench import timing as B


@pytest.mark.book  # the whole benchmark at smoke size: trains, and times fresh processes
def test_bench_smoke_writes_results_per_device(tmp_path, data_env):
    import torch

    out = tmp_path / "results.json"
    cpu = B.device_key(torch.device("cpu"))
    full_run = {"label": "full-profile run at scale (CPU, reduced limit)"}  # helpers.bench.at_scale's record
    out.write_text(json.dumps({"format": 2, "latest": "cuda: X", "devices": {
        "cuda: X": {"kept": True}, cpu: {"machine": {"key": cpu}, "full_profile_run": full_run}}}))
    r = B.run(smoke=True, out=out)
    data = json.loads(out.read_text())
    key = r["machine"]["key"]
    assert key.startswith("cpu: ") and data["latest"] == key
    assert data["devices"]["cuda: X"] == {"kept": True}  # another device's results stay
    assert data["devices"][cpu]["full_profile_run"] == full_run  # a re-run keeps this device's full run
    r = data["devices"][key]
    assert r["machine"]["smoke"] is True and r["machine"]["cpu_count"] >= 1
    e = r["embedding_tiny"]
    assert e["n_images"] == 16 and e["seed_s"] > 0 and e["ours_warm_s"] > 0
    assert e["max_abs_diff"] < 1e-3  # the seed's loop and ours compute the same embeddings
    assert r["finetune_tiny"]["ours_step_s"] > 0 and r["finetune_tiny"]["seed_step_s"] > 0
    assert r["profile_tiny_step"] and {"op", "self_cpu_ms", "share"} <= set(r["profile_tiny_step"][0])
    p = r["probe_fit"]["96"]
    assert p["fit_s"] > 0 and p["sklearn_loop_s"] > 0 and p["max_logit_diff_vs_sklearn"] < 0.5
    run = r["finetune_e2e"]["runs"]["8"]
    assert run["wall_min"] > 0 and len(run["val_auroc"]) == 1 and run["fast_path"]["compile"] == "eager"
    ls = r["load_study"]  # timed in fresh processes, warm, with the imports the call triggered
    assert ls["repeats"] == 1 and ls["call_s_median"] > 0 and ls["import_s_median"] > 0 and ls["limit"] == 4
    assert len(ls["load_avg_1min"]) == 1 and {"total_s", "top"} <= set(ls["imports_during_call"])
    assert "previous" not in r  # the earlier entry of this device had no make bench run


def test_smoke_never_writes_the_committed_results(tmp_path, monkeypatch):
    monkeypatch.setenv("IUXRAY_OUTPUT_DIR", str(tmp_path))
    assert B.smoke_path() == tmp_path / "bench_smoke.json"
    with pytest.raises(ValueError, match="must not overwrite"):
        B.run(smoke=True, out=B.RESULTS)


def test_cli_turns_expected_failures_into_one_message(tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_text("{not json")
    assert B.main(["--smoke", "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "r.json is not valid JSON" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        B.main(["--help"])
    helptext = capsys.readouterr().out
    for opt in ("--smoke", "--out", "--no-full-size", "--no-e2e", "--device"):
        assert opt in helptext


def test_plan_sizes_itself_to_the_device():
    gpu, cpu = B.plan_for("cuda"), B.plan_for("cpu")
    assert gpu["vitb_images"] >= 2048 and gpu["e2e"]["epochs"] == 30 and gpu["e2e"]["spec"] == "biomedclip-size"
    assert cpu["vitb_images"] <= 64 and cpu["e2e"] is None
    assert B.plan_for("cuda", smoke=True)["n_images"] <= 16


def test_old_single_device_results_are_read_as_one_device(tmp_path):
    f = tmp_path / "old.json"
    f.write_text(json.dumps({"machine": {"device": "cpu", "cpu_count": 2}, "smoke": False}))
    from helpers.bench.report import read_results

    assert list(read_results(f)["devices"]) == ["cpu (2 cores)"]


# The embedding path that the benchmark times (helpers.protocols.embeddings.compute_image_embeddings).

import functools  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from helpers.data.images import PixelCache
    from helpers.protocols.models import TinyConfig, build_tiny, load_model

    folder = build_tiny(tmp_path_factory.mktemp("m"), ["no effusion", "mild cardiomegaly"] * 10,
                        TinyConfig(vit_depth=1, bert_depth=1, image_size=64))
    model, _, _, info = load_model(f"local-dir:{folder}")
    px = np.random.default_rng(0).integers(0, 255, (11, 64, 64), dtype=np.uint8)
    return model, info, PixelCache(px, [f"i{i}" for i in range(11)], np.ones(11, bool), "k", folder / "px.npy")


def _reference(model, cache, mean, std, rows, batch_size):
    """The embedding loop before the fast path (DataLoader over the cache, to_model_input)."""
    from helpers.data.images import PixelDataset, to_model_input

    dl = torch.utils.data.DataLoader(PixelDataset(cache, rows), batch_size=batch_size)
    with torch.inference_mode():
        return torch.cat([model.encode_image(to_model_input(x, mean, std)) for x, _ in dl]).numpy()


def test_embeddings_equal_the_earlier_path_in_fp32(small):
    from helpers.protocols import embeddings as E

    model, info, cache = small
    rows = [9, 0, 4, 4, 10, 3, 7]
    ref = _reference(model, cache, info.mean, info.std, rows, 3)
    E.STATS.clear()
    got = E.compute_image_embeddings(model, cache, info.mean, info.std, rows=rows, batch_size=3, progress=False)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert E.STATS["image"] == 3 and got.dtype == np.float32
    every = E.compute_image_embeddings(model, cache, info.mean, info.std, batch_size=None, progress=False)
    np.testing.assert_allclose(every[rows], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "autocast"])
def test_low_precision_embeddings_stay_close_and_leave_the_model_alone(small, precision):
    from helpers.protocols import embeddings as E

    model, info, cache = small
    ref = E.compute_image_embeddings(model, cache, info.mean, info.std, progress=False)
    got = E.compute_image_embeddings(model, cache, info.mean, info.std, progress=False, precision=precision)
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999 and not np.array_equal(got, ref)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="precision"):
        E.compute_image_embeddings(model, cache, info.mean, info.std, progress=False, precision="fp8")


def test_compiled_embeddings_pad_the_last_batch_and_match(small, monkeypatch):
    """With compile on (the aot_eager backend here), the last batch is padded to the compiled shape
    and the result equals eager."""
    import torch._dynamo

    from helpers.protocols import embeddings as E

    model, info, cache = small
    ref = E.compute_image_embeddings(model, cache, info.mean, info.std, batch_size=4, progress=False)
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    got = E.compute_image_embeddings(model, cache, info.mean, info.std, batch_size=4, progress=False, compile="on")
    torch._dynamo.reset()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_gpu_sections_run_on_a_cpu_at_tiny_size(small):
    """The step variants and the bare forward that a GPU run measures work end to end (here on a
    CPU, tiny model, no compile)."""
    from helpers.protocols.models import load_model

    model, info, _ = small
    tok = load_model(info.source)[2]
    sv = B.step_variants(model, tok, 64, torch.device("cpu"), batch_size=2, steps=1, compile_too=False)
    assert sv["as_is_ms"] > 0 and sv["augment_device_ms"] > 0 and sv["checkpoint_GB"] > 0
    bf = B.bare_forward(B._Tower(model.visual), torch.device("cpu"), batch=2, steps=1, size=64, compile_too=False)
    assert set(bf) == {"autocast", "bf16"} and bf["bf16"]["img_per_s"] > 0


def test_bf16_copy_is_reused_until_the_weights_change(small):
    from helpers.protocols import embeddings as E

    model, _, _ = small
    a = E._bf16_copy(model.visual, torch.device("cpu"))
    assert E._bf16_copy(model.visual, torch.device("cpu")) is a
    with torch.no_grad():
        p = next(model.visual.parameters())
        p.add_(1.0)
        b = E._bf16_copy(model.visual, torch.device("cpu"))
        p.sub_(1.0)
    assert b is not a and next(b.parameters()).dtype == torch.bfloat16


def test_benchmark_sizes_are_the_splits_sizes(data_env):
    """The benchmark extrapolates to IU-Xray's split sizes: they must be the study's own."""
    from helpers.data.iuxray import load_study_data

    counts = load_study_data().split.split.value_counts()
    assert (B.IUXRAY_TRAIN, B.IUXRAY_VAL) == (counts["train"], counts["val"])
