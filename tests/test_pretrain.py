"""Pretraining: no IU-Xray data in the corpus, the loss goes down, the committed checkpoint."""

import json

import numpy as np
import pytest
import torch

from helpers.data import iuxray as D
from helpers.protocols import pretrain as PT
from helpers.protocols import training as T
from helpers.config import REPO_ROOT
from helpers.storage import sha256_file
from helpers.data.labels import CHEXPERT_LABELS


def test_corpus_uses_no_iuxray_data(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("the pretraining corpus must not read IU-Xray data")

    for name in ("load_reports", "build_label_table", "load_study_data", "load_metadata"):
        monkeypatch.setattr(D, name, forbidden)
    corpus = PT.chexpert_corpus(300, seed=1)
    assert len(corpus) == 300
    assert corpus.image_id.str.startswith("chexpert-").all()
    assert not corpus.image_id.str.contains("CXR").any()
    assert set(CHEXPERT_LABELS) <= set(corpus.columns)
    assert corpus[list(CHEXPERT_LABELS)].isin([0, 1]).all().all()


def test_corpus_ids_disjoint_from_iuxray(label_table):
    corpus = PT.chexpert_corpus(300, seed=2)
    assert not set(corpus.image_id) & set(label_table.images.image_id)


def test_captions_follow_labels():
    rng = np.random.default_rng(0)
    labels = {c: float("nan") for c in CHEXPERT_LABELS}
    labels.update({"Cardiomegaly": 1.0, "Pneumonia": -1.0})
    cap = PT.caption(labels, rng)
    assert any(s in cap for s in PT.SYNONYMS["Cardiomegaly"])
    assert any(h in cap for h in ("possible", "cannot be excluded", "may represent", "questionable"))
    labels = {c: float("nan") for c in CHEXPERT_LABELS}
    labels["No Finding"] = 1.0
    assert PT.caption(labels, rng) in PT.NORMAL


def test_loss_decreases_on_a_fixed_batch():
    """A few AdamW steps on one fixed batch lower the CLIP loss (starting from the committed model:
    a freshly initialised tiny BERT maps every caption to nearly the same embedding, and needs
    many steps before its text side separates)."""
    from open_clip.loss import ClipLoss

    from helpers.protocols.models import load_model

    torch.manual_seed(0)
    caps = ["cardiomegaly.", "no pleural effusion.", "pneumothorax is present.", "normal chest radiograph.",
            "possible pneumonia.", "there is atelectasis.", "rib fracture.", "a pacemaker."]
    model, _, tok, info = load_model("tiny")
    model.train()
    S = info.image_size
    bands = (torch.arange(S) // (S // 8) == torch.arange(8).view(8, 1, 1)).float().expand(8, S, S)
    x = T.normalize01(0.1 + 0.8 * bands, info.mean, info.std)  # eight distinguishable images
    t = T.trim_tokens(tok(caps))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = ClipLoss()
    losses = []
    for _ in range(15):
        loss = PT.clip_step(model, x, t, loss_fn, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3])


def test_trim_tokens_keeps_outputs(tmp_path):
    from helpers.protocols.models import TinyConfig, build_tiny, load_model

    folder = build_tiny(tmp_path / "m", ["a b c", "no effusion"] * 5, TinyConfig(vit_depth=1, bert_depth=1))
    model, _, tok, _ = load_model(f"local-dir:{folder}")
    t = tok(["no effusion", "a b c a b c"])
    with torch.no_grad():
        assert torch.allclose(model.encode_text(t), model.encode_text(T.trim_tokens(t)), atol=1e-5)


def test_committed_checkpoint_matches_record_and_loads():
    from helpers.protocols.models import load_model

    folder = REPO_ROOT / "models" / "tiny-pretrained"
    log = json.loads((folder / "pretrain_log.json").read_text())
    assert sha256_file(folder / "open_clip_model.safetensors") == log["weights_file_sha256"]
    assert (folder / "open_clip_model.safetensors").stat().st_size < 20 * 2**20
    assert log["command"].startswith("python -m helpers.protocols.pretrain")
    model, _, tok, info = load_model("tiny")
    assert info.n_params == log["n_params"]
    with torch.no_grad():
        assert model.encode_text(tok(["cardiomegaly"])).shape == (1, info.embed_dim)


def test_augment_is_seeded_and_bounded():
    x = torch.rand(4, 32, 32, generator=torch.Generator().manual_seed(0))
    a = T.augment(x, torch.Generator().manual_seed(1))
    b = T.augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1


def test_cosine_schedule():
    assert T.cosine_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert T.cosine_lr(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert T.cosine_lr(100, 100, 1.0, 10) == pytest.approx(0.0, abs=1e-9)


# --- bullet 1: committed artefacts are never overwritten by a run -----------------------------


def _copy_checkpoint(tmp_path):
    import shutil

    dst = tmp_path / "tiny-pretrained"
    shutil.copytree(REPO_ROOT / "models" / "tiny-pretrained", dst)
    return dst


def _digests(folder):
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


def test_interrupted_pretraining_leaves_the_checkpoint_byte_identical(tmp_path, data_env, monkeypatch):
    out = _copy_checkpoint(tmp_path)
    before = _digests(out)
    calls = []
    real = PT.clip_step

    def interrupted(*a, **k):  # Ctrl-C in the middle of training
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(PT, "clip_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        PT.pretrain(n_samples=32, epochs=1, batch_size=16, out=out, workers=1, progress=False, device="cpu")
    assert len(calls) == 2  # it was interrupted mid-run, after the tokenizer and a first step
    assert _digests(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-pretrained"]  # no build folder left behind
    committed = REPO_ROOT / "models" / "tiny-pretrained"
    assert _digests(committed) == before


def test_finished_pretraining_replaces_the_folder_and_records_every_hash(tmp_path, data_env):
    from helpers.protocols import models as M

    out = _copy_checkpoint(tmp_path)
    old = sha256_file(out / "open_clip_model.safetensors")
    log = PT.pretrain(n_samples=32, epochs=1, batch_size=16, out=out, workers=1, progress=False, device="cpu",
                      max_steps=1)
    assert log["steps"] == 1 and sha256_file(out / "open_clip_model.safetensors") == log["weights_file_sha256"] != old
    assert set(log["files_sha256"]) >= {"open_clip_model.safetensors", "vocab.txt", "tokenizer.json", "config.json"}
    M.verify_pretrained(out)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-pretrained"]


def test_tiny_weights_are_verified_against_the_log(tmp_path, monkeypatch):
    from helpers.protocols import models as M

    out = _copy_checkpoint(tmp_path)
    monkeypatch.setattr(M, "TINY_PRETRAINED_DIR", out)
    assert M.resolve_spec("tiny")[1] == out
    w = out / "open_clip_model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(M.CheckpointError, match=r"open_clip_model\.safetensors does not match the SHA-256 recorded "
                                                 r"in .*pretrain_log\.json.*git checkout models/tiny-pretrained"):
        M.load_model("tiny")


def test_replaced_tokenizer_is_caught_where_every_hash_is_recorded(tmp_path, monkeypatch):
    from helpers.protocols import models as M
    from helpers.storage import atomic_write_json

    out = _copy_checkpoint(tmp_path)
    log = json.loads((out / "pretrain_log.json").read_text())
    log["files_sha256"] = {p.name: sha256_file(p) for p in out.iterdir() if p.name != "pretrain_log.json"}
    atomic_write_json(out / "pretrain_log.json", log)
    M.verify_pretrained(out)
    (out / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    with pytest.raises(M.CheckpointError, match=r"vocab\.txt does not match"):
        M.verify_pretrained(out)
    (out / "pretrain_log.json").write_text("{")
    with pytest.raises(M.CheckpointError, match=r"pretrain_log\.json cannot be read"):
        M.verify_pretrained(out)
