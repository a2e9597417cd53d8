"""Tiny randomly initialised SigLIP and SigLIP 2 (NaFlex) models, saved as the hub ships them.

Each factory writes a ``save_pretrained`` folder (model, image processor and a
tokenizer trained here on a few captions with the ``tokenizers`` library) that
the ``hf_dual`` encoder loads by local path, through the same
``AutoModel`` / ``AutoProcessor`` code that loads ``google/siglip-*``. Like the
released SigLIP checkpoints, the tokenizer pads on the right, returns only
``input_ids`` (SigLIP's text tower was trained without a padding mask), and
the text tower reads 64 positions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CAPTIONS = [
    "a red cat sleeping on a blue boat",
    "the big dog with a green flag",
    "a small bird in a tree",
    "a happy man and a woman in the house",
    "a map of the world with a star",
    "a hammer, a wrench and a tool",
    "an apple on a sign",
    "the first folder icon",
]
TEXT_POSITIONS = 64  # SigLIP's text context: captions are padded to exactly this many tokens


def _tokenizer(vocab_size: int = 160) -> Any:
    """A lowercasing WordPiece tokenizer that ends each caption with ``</s>``, as SigLIP's does."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False
    )
    tok.train_from_iterator(CAPTIONS, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=TEXT_POSITIONS,
        padding_side="right",
        model_input_names=["input_ids"],
    )


def _gemma_style_tokenizer(vocab_size: int = 160) -> Any:
    """SigLIP 2's tokenizer class (Gemma's BPE, lowercased) over a BPE trained here."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Siglip2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    # merges stay inside words ("▁cat"), as in Gemma's vocabulary
    bpe.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    bpe.train_from_iterator(CAPTIONS, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    return Siglip2Tokenizer(
        vocab=model["vocab"],
        merges=[tuple(m) if isinstance(m, list) else tuple(m.split()) for m in model["merges"]],
        model_max_length=TEXT_POSITIONS,
        padding_side="right",
        model_input_names=["input_ids"],
    )


def _text_config(tokenizer: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": TEXT_POSITIONS,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
    }


def _save(
    folder: Path,
    tokenizer: Any,
    classes: tuple[Any, Any, Any],
    image_processor: Any,
    **vision: int,
) -> dict:
    """Seed 0, a 2-layer 32-d vision tower with 8 px patches (and ``vision``) beside the
    text tower for ``tokenizer``: model and processor saved in ``folder``; its spec."""
    config_class, model_class, processor_class = classes
    torch.manual_seed(0)
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": 8,
        **vision,
    }
    config = config_class(text_config=_text_config(tokenizer), vision_config=vision_config)
    model_class(config).save_pretrained(folder)
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return {"kind": "hf_dual", "model": str(folder)}


def make_tiny_siglip(folder: Path) -> dict:
    """A tiny SigLIP (32-d towers, 32 px images, 8 px patches) in ``folder``.

    Returns the encoder spec that loads it: ``{"kind": "hf_dual", "model": str(folder)}``.
    """
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    return _save(
        Path(folder),
        _tokenizer(),
        (SiglipConfig, SiglipModel, SiglipProcessor),
        SiglipImageProcessor(size={"height": 32, "width": 32}),
        image_size=32,
    )


def make_tiny_siglip2(folder: Path, max_num_patches: int = 16) -> dict:
    """A tiny SigLIP 2 NaFlex model (native aspect ratio, at most ``max_num_patches``
    8 px patches) in ``folder``; returns its ``hf_dual`` spec."""
    from transformers import (
        Siglip2Config,
        Siglip2ImageProcessor,
        Siglip2Model,
        Siglip2Processor,
    )

    return _save(
        Path(folder),
        _gemma_style_tokenizer(),
        (Siglip2Config, Siglip2Model, Siglip2Processor),
        Siglip2ImageProcessor(patch_size=8, max_num_patches=max_num_patches),
        num_patches=max_num_patches,
    )
