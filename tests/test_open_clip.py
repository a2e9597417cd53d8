"""``kind: open_clip``, offline, on a tiny random open_clip architecture
(:mod:`tests.tiny_open_clip`): the real embedding path, a local checkpoint that
round-trips bit for bit, loads that stay safe, tagged weights that are not in the
cache failing fast with the remedy, and the schema's keys."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mmalign.config import ConfigError, schema_defaults, validate_config
from mmalign.embed import EmbedOptions, embed_images, embed_shard_job, embed_texts
from mmalign.encoders import EncoderError, build_encoder

from . import models
from .tiny_open_clip import TINY_OPEN_CLIP, make_tiny_open_clip

open_clip = pytest.importorskip("open_clip")  # the `openclip` extra

CAPTIONS = ["a red cat", "the big dog on a boat", "map", "two birds"]
OPTS = EmbedOptions(batch_size=2, text_batch_size=3, num_workers=0, device="cpu", amp=False)


def validated(spec: dict) -> dict:
    config = {"datasets": {"d": {"kind": "folder", "root": "."}}, "encoders": {"e": spec}}
    return validate_config(config)["encoders"]["e"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_tiny_open_clip(tmp_path_factory.mktemp("open_clip"))


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("images")
    return models.random_images(folder, [(40, 50), (64, 64), (30, 90)], prefix="im")


def embed(spec: dict, paths: list[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    encoder = build_encoder(validated(spec)).to(torch.device("cpu"))
    return embed_images(encoder, paths, OPTS)[0], embed_texts(encoder, CAPTIONS, OPTS)[0]


def test_the_tiny_model_embeds_through_the_shard_job(tiny: dict, image_paths, tmp_path) -> None:
    manifest = pd.DataFrame(
        {
            "image_id": ["a", "a", "b", "c"],
            "image_path": [image_paths[0], image_paths[0], image_paths[1], image_paths[2]],
            "caption": CAPTIONS,
            "caption_idx": [0, 1, 0, 0],
            "split": ["train", "train", "val", "test"],
        }
    )
    manifest.to_parquet(tmp_path / "manifest.parquet")
    embed_cfg = {**schema_defaults("embed"), "device": "cpu", "num_workers": 0, "amp": False}
    out = tmp_path / "shard.npz"
    rates = embed_shard_job(
        str(tmp_path / "manifest.parquet"),
        validated(tiny),
        embed_cfg,
        "1-of-1",
        threads=1,
        seed=0,
        out_path=str(out),
    )
    with np.load(out) as npz:
        image, text = npz["image"], npz["text"]
    assert image.shape == (3, 16) and text.shape == (4, 16)
    assert image.dtype == text.dtype == np.float32
    assert np.isfinite(image).all() and np.isfinite(text).all()
    assert not np.allclose(np.linalg.norm(image, axis=1), 1)  # raw features, not normalised
    assert rates["images_per_s"] > 0 and rates["texts_per_s"] > 0

    encoder = build_encoder(validated(tiny))
    assert (encoder.image.input_size, encoder.image.dim, encoder.text.dim) == (32, 16, 16)
    assert encoder.image.render_size == round(32 / 0.875)
    assert encoder.text.tokenize(["a cat"])["input_ids"].shape == (1, 16)  # its context length


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_saved_state_dict_loads_back_bit_for_bit(
    suffix: str, tiny: dict, image_paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = build_encoder(validated(tiny)).image.module
    path = tmp_path / f"tiny{suffix}"
    state = model.state_dict()
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    expected = embed(tiny, image_paths, seed=0)
    loads = []
    real_load = torch.load

    def load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    loaded = embed({**tiny, "pretrained": str(path)}, image_paths, seed=1)  # other init
    assert np.array_equal(loaded[0], expected[0]) and np.array_equal(loaded[1], expected[1])
    # read once, by mmalign with weights_only=True; never again by open_clip's own reader
    assert loads == ([True] if suffix == ".pt" else [])
    assert not np.array_equal(embed(tiny, image_paths, seed=1)[0], expected[0])


def test_a_tag_in_a_warm_cache_dir_loads_offline(
    tiny: dict, image_paths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag's weights found in cache_dir (the Hugging Face cache layout open_clip
    downloads into), with the hub offline; the tag's registry entry is faked for
    the tiny architecture."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = build_encoder(validated(tiny)).image.module.state_dict()
    revision = "0" * 40
    repo = tmp_path / "cache" / "models--org--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(repo / "snapshots" / revision / "open_clip_model.safetensors"),
    )
    real_cfg = open_clip.get_pretrained_cfg
    monkeypatch.setattr(
        open_clip,
        "get_pretrained_cfg",
        lambda arch, tag: {"hf_hub": "org/tiny-clip/"} if tag == "tiny" else real_cfg(arch, tag),
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = {**tiny, "pretrained": "tiny", "cache_dir": str(tmp_path / "cache")}
    loaded = embed(spec, image_paths, seed=1)
    expected = embed(tiny, image_paths, seed=0)
    assert np.array_equal(loaded[0], expected[0]) and np.array_equal(loaded[1], expected[1])


class NotATensor:
    pass


def test_checkpoints_load_with_weights_only(tiny: dict, tmp_path: Path) -> None:
    path = tmp_path / "object.pt"
    torch.save({"visual.proj": NotATensor()}, path)
    with pytest.raises(EncoderError, match=r"object\.pt is not a checkpoint of tensors"):
        build_encoder(validated({**tiny, "pretrained": str(path)}))
    torch.save({"visual.proj": torch.zeros(3)}, path)
    with pytest.raises(EncoderError, match=r"does not fit the architecture"):
        build_encoder(validated({**tiny, "pretrained": str(path)}))


@pytest.mark.parametrize(
    "offline",
    ["HF_HUB_OFFLINE", "unreachable endpoint"],
)
def test_a_tag_not_in_the_cache_fails_fast_with_the_remedy(
    offline: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    if offline == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # no offline flag; the hub's endpoint refuses connections
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    cache = tmp_path / "cache"
    cache.mkdir()
    spec = {
        "kind": "open_clip",
        "model": "ViT-B-32",
        "pretrained": "laion2b_s34b_b79k",
        "cache_dir": str(cache),
    }
    start = time.perf_counter()
    with pytest.raises(EncoderError) as err:
        build_encoder(validated(spec))
    assert time.perf_counter() - start < 5
    message = str(err.value)
    for part in ("'ViT-B-32'", "'laion2b_s34b_b79k'", str(cache), "pretrained:", "cache_dir:"):
        assert part in message, (part, message)
    assert ("HF_HUB_OFFLINE" if offline == "HF_HUB_OFFLINE" else "cannot be reached") in message

    spec = {"kind": "open_clip", "model": "hf-hub:org/no-such-repo", "cache_dir": str(cache)}
    with pytest.raises(
        EncoderError, match=r"hf-hub:org/no-such-repo.*not in cache_dir.*hf download"
    ):
        build_encoder(validated(spec))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model": "ViT-B-23"}, r"no architecture 'ViT-B-23' \(did you mean ViT-B-32"),
        ({"model": "ViT-B-32", "pretrained": "laion9b"}, r"neither a file nor a tag of ViT-B-32 "),
        ({"model": "ViT-B-32", "pretrained": "./missing.pt"}, r"no such checkpoint file"),
        ({"model": "Tiny"}, rf"registers the open_clip architecture '{TINY_OPEN_CLIP}'"),
        ({"preprocess": "resize224"}, r"resize224 .* takes 32 px; use preprocess: model"),
    ],
)
def test_bad_specs_name_what_to_change(tiny: dict, change: dict, message: str) -> None:
    spec = {**tiny, **change}
    if change.get("model", "Tiny").startswith("ViT"):
        spec.pop("config_file")
    with pytest.raises(EncoderError, match=message):
        build_encoder(validated(spec))


def test_the_schema_takes_the_open_clip_keys() -> None:
    spec = validated(
        {
            "kind": "open_clip",
            "model": "ViT-B-32",
            "pretrained": "laion2b_s34b_b79k",
            "precision": "bf16",
            "cache_dir": "/models/open_clip",
            "config_file": "archs/ViT-B-32.json",
            "preprocess": "resize224",
        }
    )
    assert spec["precision"] == "bf16"
    assert validated({"kind": "open_clip", "model": "m"})["precision"] == "fp32"
    assert validated({"kind": "open_clip", "model": "m"})["preprocess"] == "model"
    bad = [
        ({"pretrain": "x"}, r"encoders\.e: unknown key 'pretrain' \(did you mean 'pretrained'\?\)"),
        ({"precision": "fp64"}, r"encoders\.e\.precision: 'fp64' is not one of"),
        ({"config_file": "a.yaml"}, r"encoders\.e\.config_file: 'a\.yaml' does not match"),
        ({"model": ""}, r"encoders\.e\.model: '' should be non-empty"),
    ]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            validated({"kind": "open_clip", "model": "m", **change})
    with pytest.raises(ConfigError, match=re.escape("encoders.e: 'model' is a required property")):
        validated({"kind": "open_clip"})
