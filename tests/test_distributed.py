"""DDP fine-tuning on 2 CPU processes (gloo) equals one process on the same global batch;
sharded embedding extraction equals the unsharded one."""

import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from helpers.data.labels import CHEXPERT_LABELS

N, S = 40, 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(root):
    from helpers.data.images import PixelCache
    from helpers.protocols.models import load_model

    model, _, tok, info = load_model(f"local-dir:{root / 'm'}")
    px = np.load(root / "px.npy", mmap_mode="r")
    cache = PixelCache(px, [f"i{i}" for i in range(N)], np.ones(N, bool), "ddp-test", root / "px.npy")
    return model, tok, info, cache, np.load(root / "y.npy")


def _train(root, run_root, device="cpu", optimizer="sgd"):
    from helpers.protocols import finetune as F

    model, tok, info, cache, y = _setup(root)
    # SGD: its update is linear in the gradient, so DDP's averaged gradient must give the same
    # weights. (Adam divides by sqrt(v): for parameters whose true gradient is zero, such as the
    # attention key bias, it turns float round-off into full-size steps of opposite signs.)
    cfg = F.FinetuneConfig(epochs=1, batch_size=8, lr=0.05, max_steps_per_epoch=3, seed=0, optimizer=optimizer)
    return F.finetune(model, tok, cache, y, np.arange(16, N), np.arange(16), list(CHEXPERT_LABELS), info.mean,
                      info.std, info.weights_sha256, cfg, run_root, device=device, progress=False)


def _worker(rank, world, port, root):
    import torch.distributed as dist

    from helpers.protocols.distributed import sharded_image_embeddings

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    run = _train(root, root / "ddp-runs")
    torch.save({"state": run.scorer.state_dict(), "history": run.history}, root / f"rank{rank}.pt")
    model, _, info, cache, _ = _setup(root)
    emb = sharded_image_embeddings(model, cache, info.mean, info.std, batch_size=7)
    np.save(root / f"emb{rank}.npy", emb)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from helpers.protocols.models import TinyConfig, build_tiny

    r = tmp_path_factory.mktemp("ddp")
    texts = [c.lower() for c in CHEXPERT_LABELS] + [f"no {c.lower()}" for c in CHEXPERT_LABELS]
    build_tiny(r / "m", texts * 3, TinyConfig(vit_depth=1, bert_depth=1, image_size=S))
    rng = np.random.default_rng(0)
    np.save(r / "px.npy", rng.integers(0, 255, (N, S, S), dtype=np.uint8))
    y = (rng.random((N, len(CHEXPERT_LABELS))) < 0.3).astype(int)
    y[:2] = 1 - y[:2]
    np.save(r / "y.npy", y)
    return r


def test_two_ranks_match_one_process(root):
    torch.set_num_threads(1)
    single = _train(root, root / "single-runs")
    mp.spawn(_worker, args=(2, _free_port(), root), nprocs=2, join=True)
    r0, r1 = (torch.load(root / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    for k, v in r0["state"].items():
        torch.testing.assert_close(v, r1["state"][k], msg=f"ranks differ at {k}")
        torch.testing.assert_close(v, single.scorer.state_dict()[k], rtol=1e-4, atol=1e-5,
                                   msg=f"DDP differs from one process at {k}")
    assert r0["history"][0]["train_loss"] == pytest.approx(single.history[0]["train_loss"], rel=1e-4)
    assert r0["history"][0]["val_auroc"] == pytest.approx(single.history[0]["val_auroc"], rel=1e-4)


def test_sharded_embeddings_equal_unsharded(root):
    from helpers.protocols.distributed import sharded_image_embeddings

    if not (root / "emb0.npy").is_file():
        pytest.skip("needs test_two_ranks_match_one_process to have run")
    model, _, info, cache, _ = _setup(root)
    one = sharded_image_embeddings(model, cache, info.mean, info.std)
    for r in (0, 1):
        np.testing.assert_allclose(np.load(root / f"emb{r}.npy"), one, rtol=1e-4, atol=1e-5)


def test_torchrun_finetune_trains_chapter_4s_runs_and_records_them(monkeypatch, tmp_path, capsys):
    """``helpers.protocols.distributed finetune`` goes through ``repeats.finetune_runs`` (the function chapter
    4 calls) with the seeds and variant asked for, so chapter 4 finds the runs in its index.
    One gloo rank; the training itself is replaced by a recorder (DDP training is checked above)."""
    import types

    from helpers.protocols import distributed, repeats
    from helpers.book import study

    calls = []

    def fake_runs(st, cfg, seeds, variant="", progress=True):
        calls.append((cfg, list(seeds), variant, progress))
        return [types.SimpleNamespace(best_epoch=1, best_val_auroc=0.5, run_dir=tmp_path / str(s))
                for s in seeds]

    fake_study = types.SimpleNamespace(artefacts=types.SimpleNamespace(
        finetune_index=lambda: tmp_path / "fine_tune_runs.json"))
    monkeypatch.setattr(repeats, "finetune_runs", fake_runs)
    monkeypatch.setattr(study, "load_study", lambda *a, **k: fake_study)
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(k, v)
    argv = ["finetune", "--seeds", "0", "1", "2", "--variant", "permuted", "--epochs", "2",
            "--backend", "gloo"]
    assert distributed.main(argv) == 0
    cfg, seeds, variant, progress = calls[0]
    assert seeds == [0, 1, 2] and variant == "permuted" and progress and cfg.epochs == 2
    out = capsys.readouterr().out
    assert "permuted labels, seed 2" in out and "fine_tune_runs.json" in out
