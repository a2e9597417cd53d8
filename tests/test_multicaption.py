"""The paper's Table 5 protocol end to end: several captions per image, scored
on the images of one eval split, kept apart from the learned stage's split.

The fast tests check :func:`mmalign.datasets.base.multicaption_note` and that
the learned stage splits by ``split``, never ``eval_split``. The workflow tests
run snakemake on a folder dataset of 50 images x 5 captions whose file puts
40 images in its ``test`` split (``splits.eval_source: dataset``), with a tiny
random CLIP, and recompute the multicaption rows of ``retrieval.parquet``
with NumPy from the embeddings; then check that a changed seed re-runs
``prepare`` and redraws ``split`` (not the file's ``eval_split``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mmalign.datasets.base import multicaption_note
from mmalign.embed import Embeddings
from mmalign.learn.common import pair_splits

from .models import WORDS, tiny_clip
from .test_workflow import snakemake

N_IMAGES, N_CAPTIONS, N_EVAL = 50, 5, 40
KS = [1, 5, 10]


# ---- multicaption_note -----------------------------------------------------------------------


def frames(captions_per_image: list[int], eval_split: list[str]) -> tuple[pd.DataFrame, ...]:
    """images.parquet and texts.parquet of images with the given caption counts."""
    ids = [f"im{i}" for i in range(len(captions_per_image))]
    images = pd.DataFrame({"image_id": ids, "split": "train", "eval_split": eval_split})
    image_row = np.repeat(np.arange(len(ids)), captions_per_image)
    texts = pd.DataFrame({"image_id": np.asarray(ids)[image_row], "image_row": image_row})
    return images, texts


def test_one_caption_per_image_is_na_naming_the_keys() -> None:
    images, texts = frames([1, 1, 1, 1], ["test", "test", "train", "train"])
    note = multicaption_note(images, texts, "test", "coco", captions="first")
    assert note.startswith("n/a: every one of the 2 images in eval split 'test'")
    assert "0.2 at K = 5" in note
    assert "datasets.coco.captions is 'first'" in note and "retrieval.protocols" in note
    note = multicaption_note(images, texts, "test", "imdb", captions="all")
    assert "datasets.imdb.captions is 'all' but the data has one caption per image" in note
    assert "datasets.x.captions: all" in multicaption_note(images, texts, "test", "x")


def test_several_captions_somewhere_are_scored() -> None:
    # Only the eval split counts: the train image's 5 captions do not make it multi-caption.
    images, texts = frames([1, 5, 1], ["test", "train", "test"])
    assert multicaption_note(images, texts, "test", "d").startswith("n/a: every one of the 2")
    images, texts = frames([1, 3, 1], ["test", "test", "train"])
    assert multicaption_note(images, texts, "test", "d") == ""


def test_an_empty_eval_split_is_na_and_old_embeddings_are_named() -> None:
    images, texts = frames([5, 5], ["train", "val"])
    note = multicaption_note(images, texts, "test", "d")
    assert note.startswith("n/a: no image of dataset 'd' is in eval split 'test'")
    assert "datasets.d.splits.eval_source" in note
    with pytest.raises(ValueError, match=r"no eval_split column.*re-run prepare"):
        multicaption_note(images.drop(columns="eval_split"), texts, "test", "d")


def test_learned_stage_splits_by_split_not_eval_split() -> None:
    """Karpathy's test images (eval_split) are not the learned stage's test pairs."""
    rng = np.random.default_rng(0)
    n = 30
    split = np.array(["train"] * 20 + ["val"] * 5 + ["test"] * 5)
    rng.shuffle(split)
    eval_split = np.array(["test"] * 10 + ["train"] * 20)
    image_row = np.repeat(np.arange(n), 2)
    emb = Embeddings(
        rng.normal(size=(n, 4)).astype(np.float32),
        rng.normal(size=(2 * n, 4)).astype(np.float32),
        pd.DataFrame({"image_id": [f"im{i}" for i in range(n)], "split": split,
                      "eval_split": eval_split}),
        pd.DataFrame({"image_id": [f"im{i}" for i in image_row],
                      "caption_idx": np.tile([0, 1], n), "split": split[image_row],
                      "eval_split": eval_split[image_row], "image_row": image_row}),
        {},
    )  # fmt: skip
    splits = pair_splits(emb, None, seed=0)
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        np.testing.assert_array_equal(part.image_rows, np.flatnonzero(split == name))
        np.testing.assert_array_equal(part.text_rows, 2 * np.flatnonzero(split == name))


# ---- the workflow ----------------------------------------------------------------------------


def caption(i: int, j: int) -> str:
    """A caption in the tiny tokenizer's vocabulary, a different one for every
    (image, caption): its first two words spell n = 5 i + j in base len(WORDS)."""
    n, w = N_CAPTIONS * i + j, len(WORDS)
    return " ".join([WORDS[n % w], WORDS[n // w], *(WORDS[(3 * n + k) % w] for k in range(n % 4))])


def file_split(i: int) -> str:
    return "test" if i < N_EVAL else "train" if i < N_EVAL + 5 else "val"


def write_study(folder: Path, seed: int = 0) -> list[str]:
    """A folder dataset of N_IMAGES images x N_CAPTIONS captions with a split column,
    a tiny random CLIP, and a config that scores the multicaption protocol only."""
    data = folder / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(data / "images" / f"im{i:02d}.png")
        rows += [
            {"image": f"im{i:02d}.png", "caption": caption(i, j), "split": file_split(i)}
            for j in range(N_CAPTIONS)
        ]
    pd.DataFrame(rows).to_csv(data / "captions.csv", index=False)
    model = folder / "models" / "clip"
    if not model.exists():
        tiny_clip(model)
    config = {
        "seed": seed,
        "datasets": {
            "toy": {
                "kind": "folder",
                "root": str(data),
                "images_dir": "images",
                "captions": "all",
                "splits": {"source": "random", "eval_source": "dataset"},
            }
        },
        "encoders": {"tiny": {"kind": "hf_clip", "model": str(model)}},
        "embed": {"batch_size": 64, "num_workers": 0},
        "retrieval": {
            "protocols": ["multicaption"],
            "metrics": ["cosine", "euclidean"],
            "ks": KS,
            "bootstrap": 20,
        },
        "learn": {"variants": [], "ablation": {"enabled": False}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return ["--cores", "2", "--resources", "gpu=1", "--set-scatter", "embed=1",
            "--directory", str(folder)]  # fmt: skip


def reference(emb: Embeddings, metric: str) -> dict[str, dict[str, float]]:
    """Every measure of both directions of the multicaption protocol, in float64
    NumPy, straight from the definitions (ties broken by lower gallery index)."""
    image_rows = np.flatnonzero(emb.images["eval_split"].to_numpy() == "test")
    texts = emb.texts.reset_index(drop=True)
    chosen = texts[texts["image_row"].isin(image_rows)].sort_values(["image_row", "caption_idx"])
    text = np.asarray(emb.text, np.float64)[chosen.index.to_numpy()]
    image = np.asarray(emb.image, np.float64)[image_rows]
    owner = np.searchsorted(image_rows, chosen["image_row"].to_numpy())  # caption -> image
    if metric == "cosine":
        t = text / np.linalg.norm(text, axis=1, keepdims=True)
        i = image / np.linalg.norm(image, axis=1, keepdims=True)
        scores = t @ i.T  # captions x images, higher is better
    else:
        scores = -np.linalg.norm(text[:, None, :] - image[None, :, :], axis=2)
    out = {}
    for direction, s, relevant in (
        ("t2i", scores, owner[:, None] == np.arange(len(image))[None, :]),
        ("i2t", scores.T, np.arange(len(image))[:, None] == owner[None, :]),
    ):
        order = np.argsort(-s, axis=1, kind="stable")  # stable: ties by lower index
        hits = np.take_along_axis(relevant, order, axis=1)  # relevance in rank order
        n_rel = relevant.sum(1)
        first = hits.argmax(1) + 1
        measures = {
            "mrr": np.mean(1.0 / first),
            "median_rank": np.median(first),
            "mean_rank": np.mean(first),
        }
        for k in KS:
            found = hits[:, :k].sum(1)
            measures[f"hit@{k}"] = np.mean(found > 0)
            measures[f"precision@{k}"] = np.mean(found / k)
            measures[f"recall@{k}"] = np.mean(found / n_rel)
        gains = (hits[:, :10] / np.log2(np.arange(2, 12))[None, : hits[:, :10].shape[1]]).sum(1)
        ideal = np.array([np.sum(1.0 / np.log2(np.arange(2, min(r, 10) + 2))) for r in n_rel])
        measures["ndcg@10"] = np.mean(gains / ideal)
        measures["n_queries"] = len(s)
        measures["max_relevant"] = int(n_rel.max())
        out[direction] = measures
    return out


@pytest.mark.workflow
def test_multicaption_end_to_end_matches_numpy(tmp_path: Path) -> None:
    """The multicaption rows of retrieval.parquet equal a float64 NumPy recomputation
    from the embeddings; then a changed seed re-runs prepare."""
    common = write_study(tmp_path)
    proc = snakemake(*common, "results/toy/tiny/retrieval.parquet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    manifest = pd.read_parquet(tmp_path / "results/toy/manifest.parquet")
    assert len(manifest) == N_IMAGES * N_CAPTIONS == manifest["caption"].nunique()
    per_image = manifest.drop_duplicates("image_id")
    assert per_image["eval_split"].tolist() == [file_split(i) for i in range(N_IMAGES)]
    assert per_image["split"].value_counts().to_dict() == {"train": 40, "val": 5, "test": 5}

    emb = Embeddings.load(tmp_path / "results/toy/tiny/embeddings")
    assert list(emb.images.columns) == ["image_id", "split", "eval_split"]
    assert list(emb.texts.columns) == ["image_id", "caption_idx", "split", "eval_split",
                                       "image_row"]  # fmt: skip
    pd.testing.assert_series_equal(
        emb.images["eval_split"], per_image["eval_split"].reset_index(drop=True)
    )

    results = pd.read_parquet(tmp_path / "results/toy/tiny/retrieval.parquet")
    multi = results[results["protocol"] == "multicaption"]
    assert set(multi["metric"]) == {"cosine", "euclidean"}
    assert (multi["note"] == "").all() and multi["value"].notna().all()
    for metric in ("cosine", "euclidean"):
        expected = reference(emb, metric)
        for direction, want in expected.items():
            rows = multi[(multi["metric"] == metric) & (multi["direction"] == direction)]
            got = {
                m if pd.isna(k) else f"{m}@{k}": v
                for m, k, v in zip(rows["measure"], rows["k"], rows["value"], strict=True)
            }
            n_queries = N_EVAL * N_CAPTIONS if direction == "t2i" else N_EVAL
            assert want["n_queries"] == n_queries and (rows["n_queries"] == n_queries).all()
            for name, value in want.items():
                if name not in ("n_queries", "max_relevant"):
                    assert got[name] == pytest.approx(value, abs=1e-12), (metric, direction, name)
            recall = rows[rows["measure"] == "recall"]["value"]
            assert recall.between(0, 1).all()
            # The bound a one-caption protocol would impose (1/K) does not hold for i2t:
            # each image query has all 5 of its captions relevant.
            assert want["max_relevant"] == (N_CAPTIONS if direction == "i2t" else 1)
            for k in KS:
                bound = min(1.0, want["max_relevant"] / k)
                assert 0 <= got[f"precision@{k}"] <= bound
                if direction == "t2i":
                    assert got[f"precision@{k}"] == pytest.approx(got[f"hit@{k}"] / k)

    # A changed seed re-runs prepare (seed is one of its params) and redraws `split`,
    # not the file's `eval_split`.
    target = "results/toy/manifest.parquet"
    proc = snakemake(*write_study(tmp_path, seed=1), target, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Nothing to be done" not in proc.stdout + proc.stderr
    after = pd.read_parquet(tmp_path / target)
    assert (manifest["split"] != after["split"]).any(), "the seed did not redraw the split"
    assert manifest["eval_split"].equals(after["eval_split"])
