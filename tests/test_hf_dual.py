"""``hf_dual``: transformers dual encoders (SigLIP, SigLIP 2, CLIP), offline, on tiny models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmalign.config import ConfigError, validate_config
from mmalign.embed import EmbedOptions, embed_images, embed_texts
from mmalign.encoders import EncoderError, build_encoder

from . import models
from .tiny_siglip import TEXT_POSITIONS, make_tiny_siglip, make_tiny_siglip2

CAPTIONS = ["a red cat", "the big dog on a boat", "zebra", "a map of the world with a star"]
OPTS = EmbedOptions(batch_size=2, text_batch_size=3, num_workers=0, device="cpu")


def validated(spec: dict) -> dict:
    config = {"datasets": {"d": {"kind": "folder", "root": "."}}, "encoders": {"e": spec}}
    return validate_config(config)["encoders"]["e"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hf_dual")
    make_tiny_siglip(root / "siglip")
    make_tiny_siglip2(root / "siglip2")
    models.tiny_clip(root / "clip")
    return root


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three PNGs of different sizes and aspect ratios."""
    return models.random_images(tmp_path_factory.mktemp("images"), [(40, 50), (24, 64), (33, 33)])


def embed(spec: dict, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    encoder = build_encoder(spec).to(torch.device("cpu"))
    img, _ = embed_images(encoder, paths, OPTS)
    txt, _ = embed_texts(encoder, CAPTIONS, OPTS)
    return img, txt


def test_make_tiny_siglip_returns_its_spec(tmp_path: Path) -> None:
    assert make_tiny_siglip(tmp_path / "s") == {"kind": "hf_dual", "model": str(tmp_path / "s")}


@pytest.mark.parametrize("arch", ["siglip", "siglip2"])
def test_tiny_siglip_embeds_deterministically(
    model_dir: Path, image_paths: list[str], arch: str
) -> None:
    spec = validated({"kind": "hf_dual", "model": str(model_dir / arch)})
    encoder = build_encoder(spec)
    assert (encoder.image.dim, encoder.text.dim, encoder.image.input_size) == (32, 32, 32)
    img, txt = embed(spec, image_paths)
    assert img.shape == (3, 32) and txt.shape == (4, 32)
    assert img.dtype == txt.dtype == np.float32
    assert np.isfinite(img).all() and np.isfinite(txt).all()
    assert not np.allclose(img[0], img[1]) and not np.allclose(txt[0], txt[1])
    img2, txt2 = embed(spec, image_paths)  # a fresh build: the same numbers, bit for bit
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(txt, txt2)


def test_siglip_captions_are_padded_to_max_length_without_a_mask(model_dir: Path) -> None:
    """As SigLIP was trained and as its docs call it: right padding to 64 tokens, input_ids only."""
    from transformers import AutoModel, AutoTokenizer

    ref = str(model_dir / "siglip")
    encoder = build_encoder(validated({"kind": "hf_dual", "model": ref}))
    batch = encoder.text.tokenize(CAPTIONS)
    assert list(batch) == ["input_ids"]
    assert batch["input_ids"].shape == (len(CAPTIONS), TEXT_POSITIONS)
    tokenizer, model = AutoTokenizer.from_pretrained(ref), AutoModel.from_pretrained(ref)
    assert (batch["input_ids"][:, -1] == tokenizer.pad_token_id).all()  # padded on the right
    reference = tokenizer(CAPTIONS, padding="max_length", return_tensors="pt")
    with torch.inference_mode():
        expected = model.get_text_features(input_ids=reference["input_ids"]).pooler_output
        torch.testing.assert_close(encoder.text.forward(batch), expected)


def test_siglip2_naflex_inputs_survive_batching(model_dir: Path, image_paths: list[str]) -> None:
    """NaFlex's patches, mask and patch grid, packed per image and batched by the
    DataLoader, give what the processor's own batch gives."""
    from transformers import AutoModel, AutoProcessor

    ref = str(model_dir / "siglip2")
    encoder = build_encoder(validated({"kind": "hf_dual", "model": ref}))
    images = [Image.open(p).convert("RGB") for p in image_paths]
    processor, model = AutoProcessor.from_pretrained(ref), AutoModel.from_pretrained(ref)
    with torch.inference_mode():
        got = encoder.image.forward(torch.stack([encoder.image.transform(im) for im in images]))
        inputs = processor.image_processor(images=images, return_tensors="pt")
        torch.testing.assert_close(got, model.get_image_features(**inputs).pooler_output)
    spec = validated({"kind": "hf_dual", "model": ref, "preprocess": "resize224"})
    with pytest.raises(EncoderError, match="resize224 needs a model that takes square pixels"):
        build_encoder(spec)


def test_tiny_clip_gives_the_same_embeddings_as_hf_dual_and_hf_clip(
    model_dir: Path, image_paths: list[str]
) -> None:
    ref = str(model_dir / "clip")
    dual = embed(validated({"kind": "hf_dual", "model": ref}), image_paths)
    clip = embed(validated({"kind": "hf_clip", "model": ref}), image_paths)
    assert dual[0].shape == (3, 16) and dual[1].shape == (4, 16)
    for a, b in zip(dual, clip, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_model_without_the_feature_methods_is_a_clear_error(tmp_path: Path) -> None:
    bert = models.tiny_text(tmp_path / "bert", "bert")
    with pytest.raises(
        EncoderError,
        match=rf"{tmp_path}/bert: BertModel \(model_type 'bert'\) has no get_image_features "
        "and no get_text_features; hf_dual needs an image-text dual encoder",
    ):
        build_encoder(validated({"kind": "hf_dual", "model": str(bert)}))


def test_the_schema_accepts_hf_dual() -> None:
    spec = validated({"kind": "hf_dual", "model": "google/siglip-base-patch16-224"})
    assert spec == {
        "kind": "hf_dual",
        "model": "google/siglip-base-patch16-224",
        "preprocess": "model",
    }
    with pytest.raises(ConfigError, match=r"encoders\.e: 'model' is a required property"):
        validated({"kind": "hf_dual"})
    with pytest.raises(ConfigError, match="unknown key 'pooling'"):
        validated({"kind": "hf_dual", "model": "m", "pooling": "cls"})
