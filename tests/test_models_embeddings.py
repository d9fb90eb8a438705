"""The tiny model loads offline through open_clip; pixel cache and embedding caches behave."""

import numpy as np
import pytest
import torch

from helpers.protocols.models import TinyConfig
from PIL import Image

from helpers.protocols import embeddings as E
from helpers.data import images as I
from helpers.protocols import models as M

CORPUS = ["no pleural effusion or pneumothorax", "heart size is normal", "mild cardiomegaly",
          "left basilar atelectasis", "right upper lobe pneumonia cannot be excluded"] * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = M.build_tiny(tmp_path_factory.mktemp("tiny"), CORPUS)
    return M.load_model(f"local-dir:{folder}")


def test_tiny_loads_offline_with_matching_dims(tiny):
    model, preprocess, tokenizer, info = tiny
    tok = tokenizer(["no effusion", "cardiomegaly"])
    assert tok.shape == (2, 256) and info.context_length == 256
    with torch.no_grad():
        img = model.encode_image(torch.zeros(1, 3, info.image_size, info.image_size))
        txt = model.encode_text(tok)
    assert img.shape[-1] == txt.shape[-1] == info.embed_dim
    assert info.image_size == TinyConfig().image_size and len(info.weights_sha256) == 64
    # BiomedCLIP's text tower settings
    assert type(model.text.pooler).__name__ == "ClsLastHiddenStatePooler"
    assert isinstance(model.text.proj, torch.nn.Sequential)
    # the Grad-CAM target layer exists
    assert isinstance(model.visual.trunk.blocks[-1].norm1, torch.nn.LayerNorm)


def test_weights_roundtrip(tiny, tmp_path):
    model, _, _, info = tiny
    folder = tmp_path / "copy"
    import shutil

    shutil.copytree(M.Path(info.source[len("local-dir:"):]), folder)
    again = M.load_model(f"local-dir:{folder}")[3]
    assert again.weights_sha256 == info.weights_sha256


@pytest.mark.parametrize("spec", ["clip", "local-dir", "hf:org/x"])
def test_unknown_spec_lists_forms(spec):
    with pytest.raises((ValueError, FileNotFoundError), match="local-dir:PATH|not found"):
        M.load_model(spec)


def test_missing_weights_named(tmp_path):
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {}}')
    with pytest.raises(FileNotFoundError, match="no weights in .*open_clip_model.safetensors"):
        M.load_model(f"local-dir:{tmp_path}")


@pytest.fixture
def pngs(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(300, 260), (224, 224), (512, 400)]):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_pixel_cache_matches_open_clip_preprocess(tiny, pngs, tmp_path):
    _, preprocess, _, info = tiny
    pc = I.build_pixel_cache(pngs, ["a", "b", "c"], preprocess, workers=1, cache_dir=tmp_path / "c",
                             progress=False)
    ours = I.to_model_input(pc.pixels[:], info.mean, info.std)
    ref = torch.stack([preprocess(Image.open(p)) for p in pngs])
    assert torch.allclose(ours, ref, atol=1e-6)


def test_missing_or_corrupt_png_named_or_skipped(tiny, pngs, tmp_path):
    _, preprocess, _, _ = tiny
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    missing = tmp_path / "missing.png"
    with pytest.raises(I.ImageError, match="corrupt.png.*cannot decode"):
        I.build_pixel_cache([pngs[0], bad], ["a", "x"], preprocess, workers=1, cache_dir=tmp_path / "c1",
                            progress=False)
    with pytest.raises(I.ImageError, match="missing.png.*not found.*helpers.data.download"):
        I.build_pixel_cache([missing], ["m"], preprocess, workers=1, cache_dir=tmp_path / "c1", progress=False)
    pc = I.build_pixel_cache([pngs[0], bad, missing], ["a", "x", "m"], preprocess, on_error="skip",
                             workers=1, cache_dir=tmp_path / "c2", progress=False)
    assert pc.ok.tolist() == [True, False, False] and len(pc.failures) == 2


def test_embedding_cache_is_reused_and_truncation_detected(tiny, pngs, tmp_path):
    model, preprocess, _, info = tiny
    pc = I.build_pixel_cache(pngs, ["a", "b", "c"], preprocess, workers=1, cache_dir=tmp_path, progress=False)
    E.STATS.clear()
    a = E.image_embeddings(model, info.weights_sha256, pc, info.mean, info.std, batch_size=2,
                           cache_dir=tmp_path, progress=False)
    n = E.STATS["image"]
    assert n == 2
    b = E.image_embeddings(model, info.weights_sha256, pc, info.mean, info.std, cache_dir=tmp_path,
                           progress=False)
    assert E.STATS["image"] == n and np.array_equal(a, b)
    f = next(tmp_path.glob("img_emb-*.npy"))
    f.write_bytes(f.read_bytes()[:100])  # truncate
    c = E.image_embeddings(model, info.weights_sha256, pc, info.mean, info.std, cache_dir=tmp_path,
                           progress=False)
    assert E.STATS["image"] > n and np.allclose(a, c, atol=1e-5)


def test_pixel_cache_truncation_detected(tiny, pngs, tmp_path):
    _, preprocess, _, _ = tiny
    pc = I.build_pixel_cache(pngs, ["a", "b", "c"], preprocess, workers=1, cache_dir=tmp_path, progress=False)
    ref = np.array(pc.pixels)
    pc.path.write_bytes(pc.path.read_bytes()[:1000])
    again = I.build_pixel_cache(pngs, ["a", "b", "c"], preprocess, workers=1, cache_dir=tmp_path, progress=False)
    assert np.array_equal(np.array(again.pixels), ref)


def test_batched_equals_per_image(tiny, pngs, tmp_path):
    model, preprocess, _, info = tiny
    pc = I.build_pixel_cache(pngs, ["a", "b", "c"], preprocess, workers=1, cache_dir=tmp_path, progress=False)
    batched = E.compute_image_embeddings(model, pc, info.mean, info.std, batch_size=3, progress=False)
    single = np.concatenate([E.compute_image_embeddings(model, pc, info.mean, info.std, rows=[i], batch_size=1,
                                                        progress=False) for i in range(3)])
    assert np.allclose(batched, single, atol=1e-5)


def test_text_embedding_cache(tiny, tmp_path):
    model, _, tokenizer, info = tiny
    E.STATS.clear()
    a = E.text_embeddings(model, tokenizer, info.weights_sha256, ["no effusion", "cardiomegaly"], cache_dir=tmp_path)
    b = E.text_embeddings(model, tokenizer, info.weights_sha256, ["no effusion", "cardiomegaly"], cache_dir=tmp_path)
    assert E.STATS["text"] == 1 and np.array_equal(a, b) and a.shape == (2, info.embed_dim)


def test_vit_mlp_ratio_is_configurable_and_the_demo_name_is_kept():
    """ViT-B/16 (BiomedCLIP's image tower) has MLP ratio 4; the demo model keeps 3 and its name."""
    import timm

    demo = M._register_timm_tiny(TinyConfig(vit_depth=1))
    wide = M._register_timm_tiny(TinyConfig(vit_depth=1, mlp_ratio=4.0))
    assert demo == "vit_iuxray_tiny_w96_d1_patch16_160" and wide != demo
    assert timm.create_model(demo).blocks[0].mlp.fc1.out_features == 3 * 96
    assert timm.create_model(wide).blocks[0].mlp.fc1.out_features == 4 * 96


def test_padded_vocabulary_has_the_asked_size_and_tokenizes_alike(tmp_path):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(M.train_wordpiece(CORPUS, tmp_path / "a", 500))
    padded = AutoTokenizer.from_pretrained(M.train_wordpiece(CORPUS, tmp_path / "b", 500, pad=True))
    assert len(plain) < 500 and len(padded) == 500
    assert "[unused0]" in padded.get_vocab() and "[unused0]" not in plain.get_vocab()
    # two trainings may break ties differently (the trainer is not deterministic), so the
    # padded tokenizer is compared with its own vocabulary less the padding, not with `plain`
    from tokenizers import Tokenizer, models

    own = {t: i for t, i in padded.get_vocab().items() if not t.startswith("[unused")}
    unpadded = Tokenizer.from_str(padded.backend_tokenizer.to_str())
    unpadded.model = models.WordPiece(own, unk_token="[UNK]")
    for s in CORPUS[:5]:
        assert padded(s)["input_ids"] == unpadded.encode(s).ids
    assert max(padded("effusion [unused0] [unused7]")["input_ids"]) < len(plain)  # text never hits padding
