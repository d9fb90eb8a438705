"""DDP fine-tuning on 2 CPU processes (gloo) equals one process on the same global batch;
sharded embedding extraction equals the unsharded one (both in the slow ``book`` tier); the
torchrun command trains chapter 4's runs on chapter 4's data, every data parameter passed through."""

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


@pytest.fixture(scope="module")
def two_ranks(root):
    """Two gloo ranks, spawned once for the module: each trains and embeds, and leaves its
    weights, history (``rank{r}.pt``) and embeddings (``emb{r}.npy``) in ``root``."""
    mp.spawn(_worker, args=(2, _free_port(), root), nprocs=2, join=True)
    return root


@pytest.mark.book  # spawns two processes that each import torch and the helpers (a minute on 2 cores)
def test_two_ranks_match_one_process(root, two_ranks):
    torch.set_num_threads(1)
    single = _train(root, root / "single-runs")
    r0, r1 = (torch.load(root / f"rank{i}.pt", weights_only=False) for i in (0, 1))
    for k, v in r0["state"].items():
        torch.testing.assert_close(v, r1["state"][k], msg=f"ranks differ at {k}")
        torch.testing.assert_close(v, single.scorer.state_dict()[k], rtol=1e-4, atol=1e-5,
                                   msg=f"DDP differs from one process at {k}")
    assert r0["history"][0]["train_loss"] == pytest.approx(single.history[0]["train_loss"], rel=1e-4)
    assert r0["history"][0]["val_auroc"] == pytest.approx(single.history[0]["val_auroc"], rel=1e-4)


@pytest.mark.book  # shares the two spawned ranks above
def test_sharded_embeddings_equal_unsharded(root, two_ranks):
    from helpers.protocols.distributed import sharded_image_embeddings

    model, _, info, cache, _ = _setup(root)
    one = sharded_image_embeddings(model, cache, info.mean, info.std)
    for r in (0, 1):
        np.testing.assert_allclose(np.load(root / f"emb{r}.npy"), one, rtol=1e-4, atol=1e-5)


def _one_rank(monkeypatch):
    """The environment torchrun gives a single rank."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(k, v)


def _record_calls(monkeypatch, tmp_path):
    """Replace the study load and the training by recorders; returns (study loads, training calls)."""
    import types

    from helpers.protocols import distributed, repeats

    loads, runs = [], []

    def fake_load(*args, **kwargs):
        loads.append((args, kwargs))
        return types.SimpleNamespace(artefacts=types.SimpleNamespace(
            finetune_index=lambda: tmp_path / "fine_tune_runs.json"))

    def fake_runs(st, cfg, seeds, variant="", progress=True):
        runs.append((cfg, list(seeds), variant, progress))
        return [types.SimpleNamespace(best_epoch=1, best_val_auroc=0.5, run_dir=tmp_path / str(s))
                for s in seeds]

    monkeypatch.setattr(distributed, "load_study", fake_load)
    monkeypatch.setattr(repeats, "finetune_runs", fake_runs)
    return loads, runs


def test_torchrun_finetune_trains_chapter_4s_runs_and_records_them(monkeypatch, tmp_path, capsys):
    """``helpers.protocols.distributed finetune`` goes through ``repeats.finetune_runs`` (the function chapter
    4 calls) with the seeds and variant asked for, so chapter 4 finds the runs in its index.
    One gloo rank; the training itself is replaced by a recorder (DDP training is checked above)."""
    from helpers.protocols import distributed

    loads, runs = _record_calls(monkeypatch, tmp_path)
    _one_rank(monkeypatch)
    argv = ["finetune", "--seeds", "0", "1", "2", "--variant", "permuted", "--epochs", "2",
            "--backend", "gloo"]
    assert distributed.main(argv) == 0
    cfg, seeds, variant, progress = runs[0]
    assert seeds == [0, 1, 2] and variant == "permuted" and progress and cfg.epochs == 2
    assert loads[0][0] == ("demo", "")
    out = capsys.readouterr().out
    assert "permuted labels, seed 2" in out and "fine_tune_runs.json" in out


def _chapter_4_study_call():
    """Chapter 4's parameters (name -> default) and the names it passes to ``load_study(``."""
    import ast

    from helpers.book import runner as R

    path = R.notebook_path("04_fine_tune")
    declared = {k: p.default for k, p in R.declared_parameters(R.read_notebook(path)).items()}
    calls = [n for n in ast.walk(ast.parse(path.read_text()))
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "load_study"]
    assert len(calls) == 1, "chapter 4 loads its study once"
    passed = [a.id for a in calls[0].args] + [k.value.id for k in calls[0].keywords]
    return declared, passed


def test_every_data_parameter_of_chapter_4_reaches_the_study(monkeypatch, tmp_path):
    """Every parameter chapter 4 passes to ``load_study`` is an option of the torchrun command, with
    chapter 4's default, and a value other than the default arrives at ``load_study`` unchanged
    (so a torchrun run trains on the data chapter 4 would, at any setting)."""
    from helpers.protocols import distributed

    declared, passed = _chapter_4_study_call()
    assert passed[:2] == ["profile", "model"]
    data = passed[2:]
    assert set(data) == set(distributed.DATA_OPTIONS), "the torchrun command takes chapter 4's data parameters"
    parser = distributed.build_parser()
    defaults = vars(parser.parse_args(["finetune"]))
    for name in data:
        assert defaults[name] == declared[name], f"--{name.replace('_', '-')}: default differs from chapter 4's"

    reports = tmp_path / "reports.tgz"
    reports.write_bytes(b"")
    (tmp_path / "png").mkdir()
    other = {"uncertain_policy": ("negative", "negative"), "split_seed": ("7", 7),
             "split_fractions": (["0.6", "0.2", "0.2"], [0.6, 0.2, 0.2]),
             "views": (["frontal", "lateral"], ["frontal", "lateral"]),
             "reports_path": (str(reports), str(reports)), "limit": ("40", 40),
             "on_error": ("skip", "skip"), "style": ("source", "source"),
             "image_dir": (str(tmp_path / "png"), str(tmp_path / "png"))}
    assert set(other) == set(data), "give this test a non-default value of every data parameter"
    full_only = {k for k, v in distributed.P.PROFILE_IMAGES.items() if v == "openi"}
    loads, _ = _record_calls(monkeypatch, tmp_path)
    _one_rank(monkeypatch)
    for profile in ("demo", "full"):
        argv = ["finetune", "--profile", profile, "--backend", "gloo"]
        for name, (cli, _) in other.items():
            if (name in full_only) != (profile == "full") and name in distributed.P.PROFILE_IMAGES:
                continue
            argv += [f"--{name.replace('_', '-')}", *([cli] if isinstance(cli, str) else cli)]
        assert distributed.main(argv) == 0
        args, kwargs = loads[-1]
        assert args == (profile, "")
        for name, (_, value) in other.items():
            expect = value if f"--{name.replace('_', '-')}" in argv else declared[name]
            assert kwargs[name] == expect, (profile, name, kwargs[name])


def test_torchrun_refuses_what_chapter_4_refuses(monkeypatch, tmp_path, capsys):
    """Bad data options stop before the process group is joined, with the option named: the rules
    of chapter 4's parameters, and an option the profile would ignore."""
    from helpers.protocols import distributed

    loads, _ = _record_calls(monkeypatch, tmp_path)
    _one_rank(monkeypatch)
    for bad, says in ((["--split-fractions", "0.5", "0.2", "0.2"], "--split-fractions"),
                      (["--uncertain-policy", "maybe"], "--uncertain-policy"),
                      (["--views", "sideways"], "--views"),
                      (["--on-error", "ignore"], "--on-error"),
                      (["--reports-path", str(tmp_path / "missing.tgz")], "--reports-path"),
                      (["--image-dir", str(tmp_path)], "--image-dir"),  # demo renders phantoms
                      (["--objective", "lp-ft"], "--objective")):
        assert distributed.main(["finetune", *bad]) == 1, bad
        assert says in capsys.readouterr().err, bad
    assert not loads
