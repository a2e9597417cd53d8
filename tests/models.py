"""Tiny randomly initialised models, saved the way the hub ships them.

Each factory writes a model folder that the encoder registry loads by local
path, through the same ``from_pretrained`` code that loads the real models.
All use a small WordPiece vocabulary (BERT's tokenizer format).
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = [
    "a",
    "an",
    "the",
    "cat",
    "dog",
    "bird",
    "red",
    "green",
    "blue",
    "big",
    "small",
    "on",
    "in",
    "of",
    "with",
    "and",
    "man",
    "woman",
    "star",
    "tree",
    "house",
    "car",
    "boat",
    "flag",
    "map",
    "sign",
    "icon",
    "hammer",
    "apple",
    "sleeping",
    "happy",
    "claw",
    "world",
    "tool",
    "wrench",
    "file",
    "import",
    "tab",
    "first",
    "folder",
    "txt",
]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]


def _tokenizer(folder: Path) -> None:
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)


def tiny_clip(folder: Path, width: int = 32, projection: int = 16) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(VOCAB),
            "hidden_size": width,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 3,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=projection,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    _tokenizer(folder)
    return folder


def tiny_blip(folder: Path) -> Path:
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor

    torch.manual_seed(0)
    config = BlipConfig(
        text_config={
            "vocab_size": len(VOCAB),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "encoder_hidden_size": 32,
            "max_position_embeddings": 64,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        image_text_hidden_size=16,
    )
    model = BlipForImageTextRetrieval(config)
    with torch.no_grad():  # BLIP's own init leaves the [CLS] features near 0 at this size
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    model.save_pretrained(folder)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    _tokenizer(folder)
    return folder


def tiny_text(folder: Path, arch: str) -> Path:
    """A tiny ``bert`` or ``xlnet`` model (with a WordPiece tokenizer)."""
    from transformers import BertConfig, BertModel, XLNetConfig, XLNetModel

    torch.manual_seed(0)
    if arch == "bert":
        model = BertModel(
            BertConfig(
                vocab_size=len(VOCAB),
                hidden_size=24,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=37,
                max_position_embeddings=64,
            )
        )
    else:
        model = XLNetModel(
            XLNetConfig(vocab_size=len(VOCAB), d_model=24, n_layer=2, n_head=4, d_inner=37)
        )
    model.save_pretrained(folder)
    _tokenizer(folder)
    return folder


def tiny_timm_weights(path: Path, model: str = "test_efficientnet") -> Path:
    """A randomly initialised timm model's weights as a safetensors file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = timm.create_model(model, pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def tiny_meta_checkpoint(path: Path, dim: int = 64, depth: int = 2) -> Path:
    """Meta-Transformer's released layout: an nn.Sequential of ViT blocks."""
    from timm.models.vision_transformer import Block

    torch.manual_seed(0)
    blocks = torch.nn.Sequential(
        *[Block(dim=dim, num_heads=dim // 64, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blocks.state_dict(), path)
    return path


def tiny_pair_spec(root: Path) -> dict:
    """A ``pair`` encoder config of a tiny timm model and a tiny BERT."""
    return {
        "kind": "pair",
        "image": {
            "kind": "timm",
            "model": "test_efficientnet",
            "preprocess": "model",
            "weights": str(tiny_timm_weights(root / "timm.safetensors")),
        },
        "text": {
            "kind": "hf_text",
            "model": str(tiny_text(root / "bert", "bert")),
            "pooling": "mean",
            "max_length": 32,
        },
    }


def random_images(folder: Path, sizes: list[tuple[int, int]], prefix: str = "") -> list[str]:
    """One random RGB PNG per ``(height, width)`` in ``sizes`` (seed 0), named
    ``<prefix><i>.png`` in ``folder``; their paths."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = Path(folder) / f"{prefix}{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths
