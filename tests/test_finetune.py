"""Fine-tuning: both objectives run, interrupted runs resume to the same weights, bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.protocols import finetune as F
from helpers.data.images import PixelCache
from helpers.data.labels import CHEXPERT_LABELS
from helpers.protocols.models import TinyConfig, build_tiny, load_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    texts = [f"no {c.lower()}" for c in CHEXPERT_LABELS] + [c.lower() for c in CHEXPERT_LABELS]
    folder = build_tiny(root / "m", texts * 3, TinyConfig(vit_depth=1, bert_depth=1, image_size=64))
    model, _, tok, info = load_model(f"local-dir:{folder}")
    rng = np.random.default_rng(0)
    n = 48
    px = rng.integers(0, 255, (n, 64, 64), dtype=np.uint8)
    cache = PixelCache(px, [f"img{i}" for i in range(n)], np.ones(n, bool), "testkey", root / "px.npy")
    y = (rng.random((n, len(CHEXPERT_LABELS))) < 0.3).astype(int)
    y[:4] = 1 - y[:4]  # every label has both classes in val
    return model, tok, info, cache, y, root


def _run(setup, run_root, **kw):
    model, tok, info, cache, y, _ = setup
    stop = kw.pop("stop_after_epochs", None)
    # one thread: the thread count changes float round-off, and exact comparisons need it fixed
    cfg = F.FinetuneConfig(**{"epochs": 2, "batch_size": 8, "lr": 1e-3, "patience": 5, "seed": 0, "cpu_threads": 1,
                              **kw})
    return F.finetune(model, tok, cache, y, np.arange(16, 48), np.arange(16), list(CHEXPERT_LABELS),
                      info.mean, info.std, info.weights_sha256, cfg, run_root, progress=False,
                      stop_after_epochs=stop)


@pytest.mark.parametrize("objective", ["contrastive", "bce"])
def test_one_epoch_runs_end_to_end(setup, tmp_path, objective):
    r = _run(setup, tmp_path, objective=objective, epochs=1, max_steps_per_epoch=2)
    assert len(r.history) == 1 and r.best_epoch == 1
    assert {"train_loss", "val_loss", "val_auroc", "epoch_s"} <= set(r.history[0])
    assert (r.run_dir / "last.pt").is_file() and (r.run_dir / "best.pt").is_file()
    model, tok, info, cache, y, _ = setup
    logits = F.predict_logits(r.scorer, cache, np.arange(5), info.mean, info.std)
    assert logits.shape == (5, len(CHEXPERT_LABELS)) and np.isfinite(logits).all()
    # the base model is untouched: fine-tuning works on a copy
    from helpers.protocols.models import _weights_hash

    assert _weights_hash(model) == info.weights_sha256


def test_bce_head_starts_at_the_zero_shot_solution(setup):
    model, tok, info, cache, y, _ = setup
    x = torch.randn(3, 3, 64, 64)
    c = F.build_scorer(model, tok, CHEXPERT_LABELS, F.FinetuneConfig(objective="contrastive"))
    b = F.build_scorer(model, tok, CHEXPERT_LABELS, F.FinetuneConfig(objective="bce"))
    with torch.no_grad():
        torch.testing.assert_close(c(x), b(x), rtol=1e-4, atol=1e-5)


def test_interrupted_run_resumes_to_identical_weights(setup, tmp_path):
    full = _run(setup, tmp_path / "a", max_steps_per_epoch=2)
    part = _run(setup, tmp_path / "b", max_steps_per_epoch=2, stop_after_epochs=1)
    assert len(part.history) == 1
    resumed = _run(setup, tmp_path / "b", max_steps_per_epoch=2)
    assert resumed.resumed_from == 1 and len(resumed.history) == 2
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history])
    for (k, a), b in zip(full.scorer.state_dict().items(), resumed.scorer.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    again = _run(setup, tmp_path / "b", max_steps_per_epoch=2)  # finished: loaded, not retrained
    assert again.resumed_from == 2 and len(again.history) == 2


def test_a_run_stopped_at_an_epoch_retraces_the_longer_schedule(setup, tmp_path):
    """stop_epoch=k trains epochs 1..k of the whole schedule: the same history and weights as
    the full-schedule run interrupted after k epochs (the budget sweep's run), finished on
    reload, and its own run key."""
    cut = _run(setup, tmp_path / "a", epochs=3, max_steps_per_epoch=2, stop_after_epochs=2)
    stopped = _run(setup, tmp_path / "b", epochs=3, max_steps_per_epoch=2, stop_epoch=2)
    assert len(stopped.history) == 2 and stopped.run_dir.name != cut.run_dir.name
    assert [h["train_loss"] for h in stopped.history] == [h["train_loss"] for h in cut.history]
    assert [h["lr_end"] for h in stopped.history] == [h["lr_end"] for h in cut.history]
    _weights_equal(stopped.scorer, cut.scorer)
    again = _run(setup, tmp_path / "b", epochs=3, max_steps_per_epoch=2, stop_epoch=2)
    assert again.resumed_from == 2 and len(again.history) == 2  # finished: loaded, not retrained
    with pytest.raises(ValueError, match="stop_epoch"):
        _run(setup, tmp_path / "c", epochs=3, stop_epoch=4)


def test_checkpoints_are_written_atomically(setup, tmp_path):
    r = _run(setup, tmp_path, epochs=1, max_steps_per_epoch=1)
    assert not [p for p in Path(r.run_dir).iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("bad,match", [({"objective": "mse"}, "objective"), ({"epochs": 0}, "epochs"),
                                       ({"lr": -1.0}, "lr"), ({"compile": "yes"}, "compile"),
                                       ({"checkpoint_every": 0}, "checkpoint_every"),
                                       ({"augment_noise": "gpu"}, "augment_noise"), ({"cpu_threads": -1}, "cpu_threads")])
def test_bad_parameters_are_named(setup, tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        _run(setup, tmp_path, **bad)


def _weights_equal(a, b):
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=k)


def test_resume_is_exact_with_a_sparser_checkpoint_schedule(setup, tmp_path, monkeypatch):
    """Checkpoints every 2 epochs; a crash during epoch 4 loses epoch 3, which the resumed run
    replays: weights and history equal an uninterrupted run."""
    full = _run(setup, tmp_path / "a", epochs=5, max_steps_per_epoch=2, checkpoint_every=2)
    calls = {"n": 0}
    real = F._validate

    def crash_in_epoch_4(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(F, "_validate", crash_in_epoch_4)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, tmp_path / "b", epochs=5, max_steps_per_epoch=2, checkpoint_every=2)
    monkeypatch.setattr(F, "_validate", real)
    run_dir = next((tmp_path / "b").iterdir())
    assert torch.load(run_dir / "last.pt", weights_only=False)["epoch"] == 2  # epoch 3 was not saved
    resumed = _run(setup, tmp_path / "b", epochs=5, max_steps_per_epoch=2, checkpoint_every=2)
    assert resumed.resumed_from == 2 and len(resumed.history) == 5
    keys = ("train_loss", "val_loss", "val_auroc")
    assert [[h[k] for k in keys] for h in resumed.history] == [[h[k] for k in keys] for h in full.history]
    _weights_equal(full.scorer, resumed.scorer)


def test_graceful_stop_is_checkpointed_off_schedule(setup, tmp_path):
    part = _run(setup, tmp_path, epochs=3, max_steps_per_epoch=1, checkpoint_every=3, stop_after_epochs=1)
    assert len(part.history) == 1
    assert _run(setup, tmp_path, epochs=3, max_steps_per_epoch=1, checkpoint_every=3).resumed_from == 1


def test_best_epoch_weights_are_kept_and_reloaded(setup, tmp_path, monkeypatch):
    """Scripted validation scores make epoch 2 the best of 4: the result, load_finetuned and a reload
    of the finished run all hold epoch 2's weights (kept in memory, written with the checkpoints)."""
    model, tok, info, cache, y, _ = setup
    scores, states = iter([0.6, 0.8, 0.7, 0.75]), []

    def scripted(tr, *a, **k):
        states.append({n: v.clone() for n, v in tr.scorer.state_dict().items()})
        return 0.5, next(scores)

    monkeypatch.setattr(F, "_validate", scripted)
    r = _run(setup, tmp_path, epochs=4, max_steps_per_epoch=1, checkpoint_every=3)
    assert r.best_epoch == 2 and r.best_val_auroc == 0.8
    for k, v in r.scorer.state_dict().items():
        torch.testing.assert_close(v, states[1][k], msg=k)
    again = F.load_finetuned(model, tok, CHEXPERT_LABELS, r.run_dir)
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, states[1][k], msg=k)
    reloaded = _run(setup, tmp_path, epochs=4, max_steps_per_epoch=1, checkpoint_every=3)
    assert reloaded.resumed_from == 4
    _weights_equal(r.scorer, reloaded.scorer)


def test_compiled_or_fallback_step_gives_the_eager_loss(setup, monkeypatch):
    """The training step through torch.compile (the aot_eager backend: graph capture and AOT
    autograd without a C++ toolchain) and through the fallback for a backend that fails both give
    the eager step's loss and gradients."""
    import torch._dynamo

    from helpers.protocols import training as T

    model, tok, info, cache, y, _ = setup
    cfg = F.FinetuneConfig(batch_size=4, compile="off", cpu_threads=1).resolved("cpu")
    x = torch.randn(4, 3, 64, 64)
    yb = torch.from_numpy(y[:4].astype(np.float32))

    def loss_and_grads(step_compile, **kw):
        tr = F._Trainer(model, tok, CHEXPERT_LABELS, cfg, torch.device("cpu"), 1, 8)
        tr.scorer.eval()  # no dropout: the same function in every variant
        fn, _ = T.maybe_compile(tr.loss, step_compile, "cpu", **kw)
        loss = fn(x, yb)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in tr.scorer.parameters() if p.grad is not None], fn

    ref, ref_g, _ = loss_and_grads("off")

    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    for mode, kw, state in (("on", {"backend": "aot_eager"}, "compiled"), ("on", {"backend": broken}, "eager")):
        with pytest.warns(UserWarning) if state == "eager" else _nullcontext():
            loss, g, fn = loss_and_grads(mode, **kw)
        assert fn.state == state
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
        for a, b in zip(g, ref_g):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


def test_default_run_key_is_unchanged_by_the_new_settings(setup):
    """Runs trained before the fast path keep their key: the speed settings are not in it and the
    new semantic settings are left out at the values that reproduce those runs."""
    import json
    from dataclasses import asdict

    from helpers.storage import sha256_bytes

    cfg = F.FinetuneConfig(epochs=3).resolved("cpu")
    old_fields = {k: v for k, v in asdict(cfg).items()
                  if k not in ("cpu_bf16", "augment_noise", "head_init", "stop_epoch", "compile",
                                 "device_pixels", "checkpoint_every", "cpu_threads")}
    rows, y = np.arange(5), np.zeros((5, 2), np.float32)
    old = sha256_bytes("|".join([F.VERSION, json.dumps(old_fields, sort_keys=True), "w", "px",
                                 sha256_bytes(rows.tobytes()), sha256_bytes(rows.tobytes()),
                                 sha256_bytes(y.tobytes())]).encode(), 16)
    assert F.run_key(cfg, "w", "px", rows, rows, y) == old
    fast = F.FinetuneConfig(epochs=3, compile="on", checkpoint_every=4, cpu_threads=2).resolved("cpu")
    assert F.run_key(fast, "w", "px", rows, rows, y) == old
    assert F.run_key(F.FinetuneConfig(epochs=3, cpu_bf16=True).resolved("cpu"), "w", "px", rows, rows, y) != old
    assert F.FinetuneConfig().resolved("cuda").augment_noise == "device"


def test_validation_pass_computes_text_directions_once(setup, monkeypatch):
    """predict_logits computes the label directions once per call and gives the per-batch forward's logits."""
    model, tok, info, cache, y, _ = setup
    sc = F.build_scorer(model, tok, CHEXPERT_LABELS, F.FinetuneConfig())
    rows = np.arange(10)
    with torch.no_grad():
        from helpers.data.images import to_model_input

        ref = sc.eval()(to_model_input(cache.pixels[rows], info.mean, info.std)).numpy()
    calls = {"n": 0}
    real = F.LabelScorer.text_directions

    def counted(self):
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(F.LabelScorer, "text_directions", counted)
    got = F.predict_logits(sc, cache, rows, info.mean, info.std, batch_size=3)
    assert calls["n"] == 1
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_step_falls_back_when_the_compiled_backward_fails(setup):
    """The compiled backward is compiled lazily; if that fails the step is redone eagerly and gives
    the eager step's loss and weights."""
    from helpers.protocols.training import CompiledOrEager

    model, tok, info, cache, y, _ = setup
    cfg = F.FinetuneConfig(batch_size=4, compile="off", cpu_threads=1).resolved("cpu")
    x, yb = torch.randn(4, 3, 64, 64), torch.from_numpy(y[:4].astype(np.float32))

    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v):
            return v.clone()

        @staticmethod
        def backward(ctx, g):
            raise RuntimeError("backward compiler missing")

    def trainer():
        tr = F._Trainer(model, tok, CHEXPERT_LABELS, cfg, torch.device("cpu"), 1, 8)
        tr.scorer.eval()  # no dropout: both trainers compute the same function
        return tr

    ref, tr = trainer(), trainer()
    tr.step_loss = CompiledOrEager(lambda a, b: Boom.apply(tr.loss(a, b)), tr.loss)
    with pytest.warns(UserWarning, match="compiled backward failed"):
        loss = tr.step(x, yb)
    assert tr.step_loss.state == "eager"
    torch.testing.assert_close(loss, ref.step(x, yb))
    _weights_equal(ref.scorer, tr.scorer)


# ---------------------------------------------------------------- LP-FT (Kumar et al. 2022)


def test_lp_ft_head_starts_at_the_probe(setup):
    """Before any update, the LP-FT scorer's logits are the probe's logits."""
    from helpers.protocols.embeddings import compute_image_embeddings
    from helpers.protocols.probe import fit_probe

    model, tok, info, cache, y, _ = setup
    emb = compute_image_embeddings(model, cache, info.mean, info.std, progress=False)
    probe = fit_probe(emb[16:], y[16:], emb[:16], y[:16], Cs=(1.0,))
    scorer = F.build_scorer(model, tok, CHEXPERT_LABELS, F.FinetuneConfig(objective="lp-ft"),
                            F.probe_head(probe)).eval()
    logits = F.predict_logits(scorer, cache, np.arange(6), info.mean, info.std)
    np.testing.assert_allclose(logits, probe.decision_function(emb[:6]), rtol=1e-4, atol=1e-4)


def test_lp_ft_trains_reloads_and_needs_its_probe(setup, tmp_path):
    from helpers.protocols.embeddings import compute_image_embeddings
    from helpers.protocols.probe import fit_probe

    model, tok, info, cache, y, _ = setup
    emb = compute_image_embeddings(model, cache, info.mean, info.std, progress=False)
    probe = fit_probe(emb[16:], y[16:], emb[:16], y[:16], Cs=(1.0,))
    with pytest.raises(ValueError, match="probe"):
        _run(setup, tmp_path / "x", objective="lp-ft", epochs=1, max_steps_per_epoch=1)
    model, tok, info, cache, y, _ = setup
    cfg = F.FinetuneConfig(objective="lp-ft", epochs=1, batch_size=8, lr=1e-4, patience=5,
                           max_steps_per_epoch=2, cpu_threads=1)
    r = F.finetune(model, tok, cache, y, np.arange(16, 48), np.arange(16), list(CHEXPERT_LABELS),
                   info.mean, info.std, info.weights_sha256, cfg, tmp_path, progress=False,
                   probe=probe)
    assert r.config["head_init"] and r.config["objective"] == "lp-ft"
    back = F.load_finetuned(model, tok, list(CHEXPERT_LABELS), r.run_dir)
    a = F.predict_logits(back, cache, np.arange(4), info.mean, info.std)
    b = F.predict_logits(r.scorer, cache, np.arange(4), info.mean, info.std)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_runs_side_by_side_equal_runs_one_after_another(setup, tmp_path, monkeypatch):
    """Chapter 4 trains its runs two at a time in forked one-thread workers: each run's
    history and weights are those of the same run trained alone on one thread."""
    from types import SimpleNamespace

    import torch

    from helpers.protocols import repeats

    model, tok, info, cache, y, _ = setup
    monkeypatch.setenv("IUXRAY_DATA_DIR", str(tmp_path))

    def study(folder):
        arts = SimpleNamespace(finetune_runs=lambda variant: tmp_path / folder / (variant or "real"),
                               finetune_index=lambda: tmp_path / folder / "index.json")
        return SimpleNamespace(model=model, tokenizer=tok, pixels=cache, y=lambda: y,
                               rows=lambda s: np.arange(16, 48) if s == "train" else np.arange(16),
                               labels=list(CHEXPERT_LABELS), info=info, artefacts=arts,
                               device=torch.device("cpu"))

    cfg = F.FinetuneConfig(epochs=2, batch_size=8, lr=1e-3, patience=5, max_steps_per_epoch=2)
    plans = [repeats.RunPlan(cfg, [0, 1]), repeats.RunPlan(cfg, [])]
    side = repeats.train_side_by_side(study("side"), plans, workers=2, progress=False)
    alone = repeats.train_side_by_side(study("alone"), plans, workers=1, progress=False)
    assert [len(r) for r in side] == [2, 0]
    for a, b in zip(side[0], alone[0]):
        assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
        for (k, va), vb in zip(a.scorer.state_dict().items(), b.scorer.state_dict().values()):
            assert torch.equal(va, vb), k
    assert a.resumed_from == a.history[-1]["epoch"]  # loaded here, trained in a worker
    # each worker left its run's image embeddings cached: reading them computes nothing
    from helpers.protocols import embeddings as E

    before = E.STATS["image"]
    for r in side[0]:
        got = repeats.run_embeddings(study("side"), r.scorer)
        assert got.shape == (len(cache), r.scorer.clip.visual.head.proj.out_features)
    assert E.STATS["image"] == before
    assert repeats.weights_id(side[0][0].scorer) != repeats.weights_id(side[0][1].scorer)
    assert repeats.weights_id(side[0][0].scorer) == repeats.weights_id(alone[0][0].scorer)


@pytest.mark.parametrize("objective", ["contrastive", "bce", "lp-ft"])
def test_logits_from_cached_embeddings_equal_a_forward_pass(setup, objective):
    """Chapter 4 reads a run's logits from its cached embeddings: the same logits as the
    forward pass (predict_logits) for every objective, head or paired prompts."""
    from helpers.protocols.embeddings import compute_image_embeddings

    model, tok, info, cache, y, _ = setup
    d = model.visual.head.proj.out_features
    rng = np.random.default_rng(0)
    head = (rng.normal(size=(len(CHEXPERT_LABELS), d)).astype(np.float32),
            rng.normal(size=len(CHEXPERT_LABELS)).astype(np.float32))
    sc = F.build_scorer(model, tok, CHEXPERT_LABELS, F.FinetuneConfig(objective=objective),
                        head if objective == "lp-ft" else None).train()
    rows = np.arange(12)
    emb = compute_image_embeddings(sc.clip, cache, info.mean, info.std, rows=rows,
                                   batch_size=5, progress=False)
    ref = F.predict_logits(sc, cache, rows, info.mean, info.std, batch_size=4)
    got = F.logits_from_embeddings(sc.train(), emb)
    assert got.shape == (12, len(CHEXPERT_LABELS))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert sc.training  # the scorer's mode is left as it was
    assert F.logits_from_embeddings(sc, emb[:0]).shape == (0, len(CHEXPERT_LABELS))
