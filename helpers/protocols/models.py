"""Loading CLIP models through open_clip, and the ``tiny`` BiomedCLIP-architecture model.

``load_model(spec)`` accepts:

* ``biomedclip``: ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` (needs the
  network, or a Hugging Face cache);
* ``hf-hub:ORG/NAME``: any open_clip model on the hub;
* ``local-dir:PATH``: a folder with ``open_clip_config.json`` (with ``model_cfg``),
  ``open_clip_model.safetensors`` (or ``.bin``) and fast tokenizer files; for an HF text tower,
  a ``config.json`` of that tower in the same folder makes loading fully offline;
* ``tiny``: the demo model, pretrained on a source corpus with no IU-Xray data
  (``models/tiny-pretrained``, made by ``python -m helpers.protocols.pretrain``; see :mod:`helpers.protocols.pretrain`);
* ``tiny-random``: the same architecture with random weights (see :func:`tiny_dir`).

Both tiny forms are ``local-dir:`` folders loaded by the same call as any checkpoint.

The ``tiny`` architecture is BiomedCLIP's, scaled down: a timm ViT image tower (patch 16 at
160 px: a 10x10 token grid where BiomedCLIP has 14x14; CLS token, linear projection) and a Hugging Face BERT
text tower with ``hf_proj_type: mlp``, ``hf_pooler_type: cls_last_hidden_state_pooler`` and a
256-token context, with a WordPiece tokenizer trained by ``tokenizers``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from helpers.config import REPO_ROOT, data_dir
from helpers.data.iuxray import load_study_data
from helpers.storage import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file

BIOMEDCLIP_ID = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
SPEC_FORMS = ("biomedclip", "tiny", "tiny-random", "local-dir:PATH", "hf-hub:ORG/NAME")

# OpenAI CLIP normalisation, as in BiomedCLIP's preprocess_cfg
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the tiny model. Image: ViT (width, depth, heads); text: BERT; shared embed."""

    embed_dim: int = 96
    vit_width: int = 96
    vit_depth: int = 4
    vit_heads: int = 3
    bert_width: int = 96
    bert_depth: int = 2
    bert_heads: int = 3
    vocab_size: int = 3000
    context_length: int = 256
    image_size: int = 160
    patch_size: int = 16
    mlp_ratio: float = 3.0
    """ViT MLP width / ViT width (ViT-B/16, BiomedCLIP's image tower: 4.0)."""
    pad_vocab: bool = False
    """Pad the trained WordPiece vocabulary with ``[unusedN]`` tokens up to ``vocab_size`` (as BERT's
    vocabularies are padded), so the text tower has a given size whatever the corpus."""


def _register_timm_tiny(cfg: TinyConfig = TinyConfig()) -> str:
    """Register the tiny ViT with timm (idempotent); return its timm model name."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    name = f"vit_iuxray_tiny_w{cfg.vit_width}_d{cfg.vit_depth}_patch{cfg.patch_size}_{cfg.image_size}"
    if cfg.mlp_ratio != 3.0:  # the demo model's name stays as committed
        name += f"_mlp{cfg.mlp_ratio:g}".replace(".", "p")
    if name in timm.list_models(name):
        return name

    def _fn(pretrained: bool = False, **kwargs):
        args = dict(patch_size=cfg.patch_size, embed_dim=cfg.vit_width, depth=cfg.vit_depth,
                    num_heads=cfg.vit_heads, mlp_ratio=cfg.mlp_ratio, img_size=cfg.image_size)
        return _create_vision_transformer("vit_tiny_patch16_224", pretrained=False, **dict(args, **kwargs))

    _fn.__name__ = name
    register_model(_fn)
    return name


def train_wordpiece(texts: Iterable[str], folder: str | os.PathLike, vocab_size: int = 3000,
                    context_length: int = 256, pad: bool = False) -> Path:
    """Train a lower-casing BERT WordPiece tokenizer on ``texts``; save fast tokenizer files.

    With ``pad``, a vocabulary smaller than ``vocab_size`` (a small corpus) is filled up with
    ``[unused0]``, ``[unused1]``, ... (never produced by tokenizing text) to exactly ``vocab_size``.

    Writes ``tokenizer.json``, ``vocab.txt``, ``tokenizer_config.json`` and
    ``special_tokens_map.json`` into ``folder`` (loadable by ``AutoTokenizer``).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special, min_frequency=1)
    tok.train_from_iterator(list(texts), trainer=trainer)
    if pad and tok.get_vocab_size() < vocab_size:
        vocab = tok.get_vocab()
        vocab.update({f"[unused{k}]": len(vocab) + k for k in range(vocab_size - len(vocab))})
        tok.model = models.WordPiece(vocab, unk_token="[UNK]")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    atomic_write_text(folder / "tokenizer.json", tok.to_str())
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    atomic_write_text(folder / "vocab.txt", "".join(f"{t}\n" for t, _ in vocab))
    atomic_write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "BertTokenizerFast", "do_lower_case": True,
        "model_max_length": context_length, "pad_token": "[PAD]", "unk_token": "[UNK]",
        "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"})
    atomic_write_json(folder / "special_tokens_map.json", {
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "mask_token": "[MASK]"})
    return folder


def build_tiny(folder: str | os.PathLike, texts: Iterable[str], cfg: TinyConfig = TinyConfig(),
               seed: int = 0) -> Path:
    """Write a randomly initialised tiny model as a ``local-dir:`` folder, from configs alone.

    Parameters
    ----------
    folder : output folder (created).
    texts : corpus for the WordPiece tokenizer.
    cfg : sizes. seed : torch seed of the initial weights.
    """
    import open_clip
    from transformers import BertConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = train_wordpiece(texts, folder, cfg.vocab_size, cfg.context_length, cfg.pad_vocab)
    vocab_size = sum(1 for _ in open(tok_dir / "vocab.txt", encoding="utf-8"))
    bert = BertConfig(vocab_size=vocab_size, hidden_size=cfg.bert_width,
                      num_hidden_layers=cfg.bert_depth, num_attention_heads=cfg.bert_heads,
                      intermediate_size=cfg.bert_width * 4, max_position_embeddings=cfg.context_length,
                      pad_token_id=0)
    atomic_write_text(folder / "config.json", bert.to_json_string())
    model_cfg = {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {"timm_model_name": _register_timm_tiny(cfg), "timm_model_pretrained": False,
                       "timm_pool": "", "timm_proj": "linear", "image_size": cfg.image_size},
        "text_cfg": {"hf_model_name": ".", "hf_tokenizer_name": ".", "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler",
                     "context_length": cfg.context_length},
    }
    atomic_write_json(folder / "open_clip_config.json", {
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)},
        "tiny_config": cfg.__dict__,
    })
    torch.manual_seed(seed)
    import logging

    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # "no CLIP weights found": expected here
    try:
        model = open_clip.create_model(f"local-dir:{folder}", load_weights=False,
                                       text_cfg=_local_text_cfg(folder, model_cfg["text_cfg"]))
    finally:
        root.level = level
    save_weights(model, folder)
    return folder


def save_weights(model: torch.nn.Module, folder: str | os.PathLike) -> Path:
    """Save a model's state dict as ``open_clip_model.safetensors`` in ``folder``, atomically."""
    from safetensors.torch import save

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return atomic_write_bytes(Path(folder) / "open_clip_model.safetensors", save(sd))


def _local_text_cfg(folder: Path, text_cfg: dict) -> dict:
    """``text_cfg`` with ``hf_model_name`` pointing at ``folder`` when it holds the tower config.

    The HF text tower is built from its ``config.json`` (weights come from the CLIP
    checkpoint), so a folder with that file loads without the network.
    """
    t = dict(text_cfg)
    if (folder / "config.json").is_file() and (t.get("hf_model_name") in (".", "", None)
                                               or not Path(str(t.get("hf_model_name"))).is_dir()):
        t["hf_model_name"] = str(folder.resolve())
    t["hf_model_pretrained"] = False
    return t


def tiny_dir() -> Path:
    """Folder of the ``tiny-random`` model: ``data_dir()/models/tiny-random`` (built on first use,
    tokenizer trained on the train-split report text)."""
    return data_dir() / "models" / "tiny-random"


def tiny_corpus() -> list[str]:
    """Texts for the tiny model's tokenizer: FINDINGS + IMPRESSION of the train-split reports."""

    d = load_study_data()
    train = set(d.split.report_id[d.split.split == "train"])
    r = d.table.reports
    r = r[r.report_id.isin(train)]
    return (r.findings.fillna("") + " " + r.impression.fillna("")).tolist()


@dataclass
class ModelInfo:
    """What was loaded: for page stamps and cache keys."""

    spec: str
    source: str
    n_params: int
    weights_sha256: str
    embed_dim: int
    image_size: int
    context_length: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Short id for stamps: spec plus the first 12 hex digits of the weights hash."""
        return f"{self.spec}@{self.weights_sha256[:12]}"


def _weights_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


TINY_PRETRAINED_DIR = REPO_ROOT / "models" / "tiny-pretrained"
"""The committed demo checkpoint (``tiny``)."""
_RESTORE = ("restore the committed copy with `git checkout models/tiny-pretrained`, or re-create it with "
            "`python -m helpers.protocols.pretrain` (about 5 min on two CPU cores)")


class CheckpointError(ValueError):
    """A checkpoint whose files differ from the hashes recorded beside them; the message names the
    file and how to restore it."""


class ModelFolderError(ValueError):
    """A ``local-dir:`` model folder that cannot be loaded (unreadable config, garbage weights,
    missing tokenizer); the message names the folder, the file and what was expected."""


WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "open_clip_model.bin")
"""Weight files a ``local-dir:`` folder may hold (open_clip's own preference order first)."""
_EXPECTED = ("expected a folder with open_clip_config.json (a JSON object whose 'model_cfg' has embed_dim, "
             "vision_cfg and text_cfg), the weights (open_clip_model.safetensors or open_clip_pytorch_model.bin) "
             "and the tokenizer files")


def read_local_config(folder: Path) -> dict:
    """``folder/open_clip_config.json``, checked: a JSON object whose ``model_cfg`` is an object
    with ``embed_dim``, ``vision_cfg`` and ``text_cfg``. Raises :class:`ModelFolderError` naming
    the file and what is missing."""
    path = folder / "open_clip_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelFolderError(f"model folder {folder}: {path.name} cannot be read ({type(e).__name__}: {e}); "
                               f"{_EXPECTED}") from None
    mc = cfg.get("model_cfg") if isinstance(cfg, dict) else None
    if not isinstance(mc, dict):
        raise ModelFolderError(f"model folder {folder}: {path.name} has no 'model_cfg' object "
                               f"(found {type(cfg).__name__} {str(cfg)[:60]!r}); {_EXPECTED}")
    lacking = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in mc]
    if lacking or not all(isinstance(mc[k], dict) for k in ("vision_cfg", "text_cfg") if k in mc):
        raise ModelFolderError(f"model folder {folder}: 'model_cfg' in {path.name} lacks {lacking or 'objects'} "
                               f"(has {sorted(mc)}); {_EXPECTED}")
    return cfg


def _check_weights(folder: Path) -> None:
    """Read the header of the folder's safetensors weights (cheap): garbage, a truncated file or an
    empty one raises :class:`ModelFolderError` naming it."""
    f = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if f is None or f.suffix != ".safetensors":
        return
    try:
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as st:
            st.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelFolderError(f"model folder {folder}: the weights {f.name} cannot be read "
                               f"({type(e).__name__}: {e}); expected an open_clip checkpoint in safetensors "
                               f"format; copy the checkpoint again") from None


def verify_pretrained(folder: Path = TINY_PRETRAINED_DIR) -> None:
    """Check the demo checkpoint against its ``pretrain_log.json``: the weights' SHA-256
    (``weights_file_sha256``) and, where recorded, every file's (``files_sha256``).

    Raises ``FileNotFoundError`` (weights or log missing) or :class:`CheckpointError` (unreadable
    log, or a file that differs), naming the file and how to restore it.
    """

    weights, log_path = folder / "open_clip_model.safetensors", folder / "pretrain_log.json"
    for f in (weights, log_path):
        if not f.is_file():
            raise FileNotFoundError(f"the pretrained demo model is incomplete: {f} is missing; {_RESTORE}")
    try:
        log = json.loads(log_path.read_text())
        want = {"open_clip_model.safetensors": log["weights_file_sha256"], **log.get("files_sha256", {})}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{log_path} cannot be read ({type(e).__name__}: {e}); {_RESTORE}") from None
    for name, digest in want.items():
        f = folder / name
        got = sha256_file(f) if f.is_file() else "missing"
        if got != digest:
            raise CheckpointError(f"{f} does not match the SHA-256 recorded in {log_path} (recorded "
                                  f"{str(digest)[:12]}, found {got[:12]}): the demo checkpoint was changed or "
                                  f"replaced; {_RESTORE}")


def resolve_spec(spec: str) -> tuple[str, Path | None]:
    """Map a spec to (open_clip model name, local folder or None). Unknown forms raise.

    ``tiny`` is verified against the hashes in its ``pretrain_log.json`` (:func:`verify_pretrained`).
    """
    if spec == "biomedclip":
        return BIOMEDCLIP_ID, None
    if spec == "tiny":
        d = TINY_PRETRAINED_DIR
        verify_pretrained(d)
        return f"local-dir:{d}", d
    if spec == "tiny-random":
        d = tiny_dir()
        if not (d / "open_clip_model.safetensors").is_file():
            build_tiny(d, tiny_corpus())
        return f"local-dir:{d}", d
    if spec.startswith("local-dir:"):
        d = Path(spec[len("local-dir:"):])
        if not d.is_dir():
            raise FileNotFoundError(f"model folder not found: {d} (from spec {spec!r}); expected a "
                                    f"folder with open_clip_config.json and open_clip_model.safetensors")
        cfg = d / "open_clip_config.json"
        if not cfg.is_file():
            raise FileNotFoundError(f"{cfg} is missing: a local-dir: model needs open_clip_config.json "
                                    f"with a 'model_cfg' entry")
        if not any((d / n).is_file() for n in WEIGHT_FILES):
            raise FileNotFoundError(f"no weights in {d}: expected open_clip_model.safetensors (or .bin); "
                                    f"copy the checkpoint there, or fetch it with `python -m helpers.data.download`")
        read_local_config(d)
        _check_weights(d)
        return f"local-dir:{d}", d
    if spec.startswith("hf-hub:"):
        return spec, None
    raise ValueError(f"unknown model spec {spec!r}; accepted forms: {', '.join(SPEC_FORMS)}")


def load_model(spec: str, device: str | torch.device = "cpu"):
    """Load a CLIP model with open_clip.

    Returns
    -------
    model : ``open_clip.CustomTextCLIP`` in eval mode on ``device``.
    preprocess : open_clip's validation transform (PIL image -> float tensor (3, S, S)).
    tokenizer : open_clip tokenizer (list of str -> int64 tensor (n, context_length)).
    info : :class:`ModelInfo`.
    """
    import open_clip

    _register_timm_tiny()
    name, folder = resolve_spec(spec)
    kwargs: dict[str, Any] = {}
    if folder is not None:
        cfg = read_local_config(folder)
        try:
            if "tiny_config" in cfg:
                _register_timm_tiny(TinyConfig(**cfg["tiny_config"]))
        except (TypeError, ValueError) as e:
            raise ModelFolderError(f"model folder {folder}: 'tiny_config' in open_clip_config.json is not "
                                   f"valid ({e}); expected the fields of helpers.protocols.models.TinyConfig") from None
        text_cfg = cfg["model_cfg"].get("text_cfg", {})
        if "hf_model_name" in text_cfg:
            kwargs["text_cfg"] = _local_text_cfg(folder, text_cfg)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, device=device, **kwargs)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as e:  # noqa: BLE001 - name the folder whatever open_clip, timm or torch raise
        if folder is None:
            raise
        raise ModelFolderError(f"model folder {folder} cannot be loaded ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}); {_EXPECTED}") from e
    model.eval()
    vis = model.visual
    image_size = vis.image_size[0] if isinstance(vis.image_size, (tuple, list)) else vis.image_size
    norm = [t for t in preprocess.transforms if type(t).__name__ == "Normalize"][0]
    with torch.no_grad():
        embed_dim = int(model.encode_text(tokenizer(["x"]).to(device)).shape[-1])
    info = ModelInfo(
        spec=spec, source=name, n_params=sum(p.numel() for p in model.parameters()),
        weights_sha256=_weights_hash(model), embed_dim=embed_dim,
        image_size=int(image_size), context_length=int(tokenizer.context_length),
        mean=tuple(float(x) for x in norm.mean), std=tuple(float(x) for x in norm.std))
    return model, preprocess, tokenizer, info
