"""`kind: precomputed`: embeddings made elsewhere, validated against the
manifest and written as the standard embeddings folder (mmalign.precomputed)."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mmalign.config import ConfigError, embedding_plan, validate_config
from mmalign.embeddings import Embeddings, split_manifest, write_embeddings
from mmalign.precomputed import PrecomputedError, embed_precomputed, input_files

from .tiny_precomputed import export_precomputed, write_npy_source, write_parquet_source

ROOT = Path(__file__).resolve().parents[1]


def make_manifest(n_images: int = 6) -> pd.DataFrame:
    """Image ``i`` has ``1 + i % 2`` captions; splits cycle train, val, test."""
    rows = [
        {"image_id": f"im{i}", "image_path": f"/data/im{i}.png", "caption": f"caption {i}.{c}",
         "caption_idx": c, "split": ("train", "val", "test")[i % 3],
         "eval_split": ("test", "train", "val")[i % 3]}
        for i in range(n_images) for c in range(1 + i % 2)
    ]  # fmt: skip
    manifest = pd.DataFrame(rows)
    manifest["caption_idx"] = manifest["caption_idx"].astype("int32")
    return manifest


def encoder_spec(**keys: Any) -> dict[str, Any]:
    """A precomputed encoder's spec as the validated config has it (defaults filled)."""
    config = validate_config(
        {
            "datasets": {"d": {"kind": "folder"}},
            "encoders": {"mine": {"kind": "precomputed", **keys}},
        }
    )
    return config["encoders"]["mine"]


@pytest.fixture
def folder(tmp_path: Path) -> tuple[pd.DataFrame, Path]:
    """A manifest and an embeddings folder for it (as embed_merge writes one)."""
    manifest = make_manifest()
    images, texts = split_manifest(manifest)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(len(images), 5)).astype(np.float32)
    text = rng.normal(size=(len(texts), 3)).astype(np.float32)
    out = tmp_path / "computed"
    write_embeddings(out, image, text, images, texts, {"dim_image": 5, "dim_text": 3})
    return manifest, out


def run(manifest: pd.DataFrame, spec: dict[str, Any], out: Path, **keys: Any) -> Embeddings:
    embed_precomputed(manifest, encoder_spec(**{**spec, **keys}), "d", "mine", out)
    return Embeddings.load(out)


def raises(
    manifest: pd.DataFrame,
    paths: dict[str, str],
    out: Path,
    message: str,
    *,
    exact: bool = False,
    **keys: Any,
) -> None:
    """``run`` fails with a PrecomputedError that contains ``message`` (is it, if ``exact``)."""
    with pytest.raises(PrecomputedError, match=re.escape(message)) as err:
        run(manifest, paths, out, **keys)
    assert not out.exists()  # nothing written
    if exact:
        assert str(err.value) == message


def sources(manifest: pd.DataFrame, emb: Embeddings) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """Each modality's (ids, matrix) in manifest order, to write altered copies."""
    return {
        "image": (emb.images[["image_id"]].copy(), np.asarray(emb.image).copy()),
        "text": (emb.texts[["image_id", "caption_idx"]].copy(), np.asarray(emb.text).copy()),
    }


def assert_same(out: Embeddings, ref: Embeddings) -> None:
    np.testing.assert_array_equal(out.image, ref.image)
    np.testing.assert_array_equal(out.text, ref.text)
    assert out.image.dtype == out.text.dtype == np.float32
    pd.testing.assert_frame_equal(out.images, ref.images)
    pd.testing.assert_frame_equal(out.texts, ref.texts)
    for key in ("dim_image", "dim_text"):
        assert out.meta[key] == ref.meta[key]


# ---------------------------------------------------------------- the writer


@pytest.mark.parametrize("form", ["parquet", "npy"])
def test_the_folder_read_back_equals_the_input(folder, tmp_path: Path, form: str) -> None:
    manifest, computed = folder
    spec = export_precomputed(computed, tmp_path / "mine", form=form)  # rows reversed
    out = run(manifest, spec, tmp_path / "out")
    assert_same(out, Embeddings.load(computed))
    assert out.meta["n_images"] == 6 and out.meta["n_texts"] == 9
    assert out.meta["config"]["kind"] == "precomputed"
    assert out.meta["precomputed"]["dtype"] == {"image": "float32", "text": "float32"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in computed.iterdir()
    )


def test_ids_parquet_beside_a_npy_and_float_caption_idx(folder, tmp_path: Path) -> None:
    manifest, computed = folder
    emb = Embeddings.load(computed)
    src = sources(manifest, emb)
    ids, matrix = src["image"]
    write_npy_source(tmp_path / "in/image.npy", ids, matrix, ids_as="parquet")
    ids, matrix = src["text"]
    write_parquet_source(
        tmp_path / "in/text.parquet", ids.astype({"caption_idx": "float64"}), matrix
    )
    out = run(
        manifest,
        {"image": str(tmp_path / "in/image.npy"), "text": str(tmp_path / "in/text.parquet")},
        tmp_path / "out",
    )
    assert_same(out, emb)
    assert input_files(encoder_spec(image="x/{dataset}.npy", text="t.parquet"), "d") == [
        "x/d.npy",
        "t.parquet",
    ]  # no ids file exists: the rule runs and says which to write


@pytest.mark.parametrize("dtype", ["float64", "float16", "int32"])
def test_other_dtypes_are_converted_and_logged(folder, tmp_path, caplog, dtype: str) -> None:
    manifest, computed = folder
    emb = Embeddings.load(computed)
    src = sources(manifest, emb)
    scale = 100 if dtype == "int32" else 1
    paths = {}
    for modality, (ids, matrix) in src.items():
        paths[modality] = str(tmp_path / f"in/{modality}.npy")
        write_npy_source(Path(paths[modality]), ids, (matrix * scale).astype(dtype))
    with caplog.at_level(logging.INFO, logger="mmalign.precomputed"):
        out = run(manifest, paths, tmp_path / "out")
    assert f"{paths['image']}: converted the embeddings from {dtype} to float32" in caplog.text
    assert out.image.dtype == np.float32 and out.meta["precomputed"]["dtype"]["text"] == dtype
    expected = (np.asarray(emb.image) * scale).astype(dtype).astype(np.float32)
    np.testing.assert_array_equal(out.image, expected)


# ---------------------------------------------------------------- the errors


def write_altered(tmp_path: Path, manifest, computed, modality: str, alter) -> dict[str, str]:
    """Both modalities as parquet, ``modality``'s (ids, matrix) passed through ``alter``."""
    src = sources(manifest, Embeddings.load(computed))
    paths = {}
    for name, (ids, matrix) in src.items():
        if name == modality:
            ids, matrix = alter(ids, matrix)
        paths[name] = str(tmp_path / f"in/{name}.parquet")
        write_parquet_source(Path(paths[name]), ids, matrix)
    return paths


def poison(ids: pd.DataFrame, matrix: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """A NaN and an inf (1e300 is inf in float32) in two captions' rows."""
    matrix = matrix.astype(np.float64)
    matrix[[6, 2], 1] = [np.nan, 1e300]
    return ids, matrix


@pytest.mark.parametrize(
    "modality, alter, message, exact",
    [
        pytest.param(
            "image",
            lambda ids, m: (ids.drop(index=[3, 4]), np.delete(m, [3, 4], 0)),
            "{path}: 2 of the manifest's 6 images have no row (first: 'im3', 'im4'); "
            "write a row for every image_id of results/d/manifest.parquet (dataset 'd')",
            True,
            id="missing images",
        ),
        pytest.param(
            "text",
            lambda ids, m: (ids.iloc[:-1], m[:-1]),
            "{path}: 1 of the manifest's 9 captions have no row (first: 'im5'#1); "
            "write a row for every image_id and caption_idx of results/d/manifest.parquet",
            False,
            id="missing captions",
        ),
        pytest.param(
            "image",
            lambda ids, m: (pd.concat([ids, ids.iloc[[2]]]), np.vstack([m, m[[2]]])),
            "{path}: 1 rows repeat an id already given (first: 'im2'); give each image one row",
            False,
            id="repeated id",
        ),
        pytest.param(
            "text",
            poison,
            "{path}: 2 embeddings contain NaN or inf (after conversion to float32), "
            "first 'im1'#1; fix or recompute them",
            True,
            id="nan and inf",
        ),
        pytest.param(
            "image",
            lambda ids, m: (ids, m.astype(str)),
            "{path}: the 'embedding' values are string, not numbers",
            False,
            id="strings",
        ),
    ],
)
def test_bad_rows_name_the_file_the_count_and_the_first_id(
    folder, tmp_path: Path, modality: str, alter, message: str, exact: bool
) -> None:
    manifest, computed = folder
    paths = write_altered(tmp_path, manifest, computed, modality, alter)
    raises(manifest, paths, tmp_path / "out", message.format(path=paths[modality]), exact=exact)


def test_extra_ids_are_an_error_or_dropped(folder, tmp_path: Path) -> None:
    manifest, computed = folder

    def extra(ids, matrix):
        more = pd.DataFrame({"image_id": ["ghost", "im0"], "caption_idx": [0, 7]})
        return pd.concat([ids, more], ignore_index=True), np.vstack([matrix, matrix[:2]])

    paths = write_altered(tmp_path, manifest, computed, "text", extra)
    message = (
        f"{paths['text']}: 2 rows have ids that results/d/manifest.parquet lacks (first: "
        "'ghost'#0, 'im0'#7); they may be captions the manifest left out (max_images, "
        "captions: first, skipped bad input): remove them, or set "
        "encoders.mine.extra_ids: ignore to drop them"
    )
    raises(manifest, paths, tmp_path / "out", message, exact=True)
    out = run(manifest, paths, tmp_path / "out", extra_ids="ignore")
    assert_same(out, Embeddings.load(computed))
    assert out.meta["precomputed"]["extra_rows_dropped"] == {"image": 0, "text": 2}


def test_rows_of_a_wrong_dimension_are_an_error(folder, tmp_path: Path) -> None:
    manifest, computed = folder
    paths = write_altered(tmp_path, manifest, computed, "image", lambda ids, m: (ids, m))
    table = pd.read_parquet(paths["image"])
    table.at[4, "embedding"] = table.at[4, "embedding"][:-1]  # 4-d among 5-d rows
    table.to_parquet(paths["image"], index=False)
    message = (
        f"{paths['image']}: the 'embedding' rows have different lengths (5 for 'im0', 4 for "
        "'im4'); every row must have the same dimension"
    )
    raises(manifest, paths, tmp_path / "out", message)


def test_a_npy_of_a_wrong_shape_is_an_error(folder, tmp_path: Path) -> None:
    manifest, computed = folder
    src = sources(manifest, Embeddings.load(computed))
    image = tmp_path / "in/image.npy"
    write_npy_source(image, *src["image"])
    write_parquet_source(tmp_path / "in/text.parquet", *src["text"])
    paths = {"image": str(image), "text": str(tmp_path / "in/text.parquet")}
    np.save(image, src["image"][1][:, 0])  # 1-D
    message = f"{image}: a 1-D array of shape (6,); write a 2-D matrix, one row per id"
    raises(manifest, paths, tmp_path / "out", message)
    np.save(image, src["image"][1][:5])  # 5 rows, 6 ids
    message = (
        f"{image}: 5 rows, but {tmp_path / 'in/image.ids.csv'} names 6 ids; write one id per "
        "matrix row, in the matrix's order"
    )
    raises(manifest, paths, tmp_path / "out", message)
    (tmp_path / "in/image.ids.csv").unlink()
    message = (
        f"{image}: no ids file beside it; write {tmp_path / 'in/image.ids.parquet'} (or "
        f"{tmp_path / 'in/image.ids.csv'}) with the columns ['image_id']"
    )
    raises(manifest, paths, tmp_path / "out", message)


def test_a_missing_file_is_named(folder, tmp_path: Path) -> None:
    manifest, computed = folder
    paths = write_altered(tmp_path, manifest, computed, "image", lambda ids, m: (ids, m))
    missing = tmp_path / "in/nowhere.parquet"
    raises(manifest, {**paths, "image": str(missing)}, tmp_path / "out", f"{missing}: no such file")


def test_no_model_library_is_imported(folder, tmp_path: Path) -> None:
    manifest, computed = folder
    spec = export_precomputed(computed, tmp_path / "mine", form="npy")
    manifest.to_parquet(tmp_path / "manifest.parquet")
    code = f"""
import sys
import pandas as pd
from mmalign.config import validate_config
from mmalign.embeddings import Embeddings
from mmalign.precomputed import embed_precomputed
config = validate_config({{"datasets": {{"d": {{"kind": "folder"}}}},
                          "encoders": {{"mine": {spec!r}}}}})
embed_precomputed(pd.read_parquet({str(tmp_path / "manifest.parquet")!r}),
                  config["encoders"]["mine"], "d", "mine", {str(tmp_path / "out")!r})
assert Embeddings.load({str(tmp_path / "out")!r}).image.shape == (6, 5)
heavy = sorted(m for m in ("torch", "torchvision", "transformers", "timm", "open_clip",
                           "mmalign.embed", "mmalign.encoders") if m in sys.modules)
assert not heavy, heavy
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- downstream


def test_retrieval_scores_of_the_round_trip_are_equal(tmp_path: Path) -> None:
    from mmalign.retrieval import RetrievalOptions, score_protocol

    from .test_retrieval import embeddings

    emb = embeddings(30, captions=2)
    computed = tmp_path / "computed"
    write_embeddings(computed, emb.image, emb.text, emb.images, emb.texts, {})
    manifest = emb.texts.drop(columns="image_row").assign(
        image_path=lambda f: "/data/" + f["image_id"] + ".png",
        caption=lambda f: f["image_id"] + " caption " + f["caption_idx"].astype(str),
    )
    spec = export_precomputed(computed, tmp_path / "mine")
    embed_precomputed(manifest, encoder_spec(**spec), "d", "mine", tmp_path / "out")
    opts = RetrievalOptions(subset_size=10, bootstrap=20, metrics=("cosine", "csls"))
    for protocol in ("subset", "full", "multicaption"):
        a = score_protocol(Embeddings.load(computed), protocol, opts, "d", "e", captions="all")
        b = score_protocol(
            Embeddings.load(tmp_path / "out"), protocol, opts, "d", "e", captions="all"
        )
        assert a["value"].notna().any()
        pd.testing.assert_frame_equal(a, b)


# ---------------------------------------------------------------- config and plan


def test_paths_need_dataset_with_several_datasets() -> None:
    two = {"a": {"kind": "folder"}, "b": {"kind": "folder"}}
    one_file = {"kind": "precomputed", "image": "e/image.parquet", "text": "e/{dataset}/t.npy"}
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "encoders.mine.image: 'e/image.parquet' is one file for 2 datasets (a, b); "
            "put {dataset} in the path"
        ),
    ):
        validate_config({"datasets": two, "encoders": {"mine": one_file}})
    with pytest.raises(ConfigError, match=re.escape("has a placeholder other than {dataset}")):
        encoder_spec(image="e/{encoder}.parquet", text="t.parquet")
    with pytest.raises(ConfigError, match=r"encoders\.mine\.text: 't\.csv' does not match"):
        encoder_spec(image="i.parquet", text="t.csv")
    with pytest.raises(ConfigError, match=r"unknown key 'model'"):
        encoder_spec(image="i.parquet", text="t.parquet", model="m")
    assert encoder_spec(image="i.npy", text="t.parquet")["extra_ids"] == "error"


def test_each_embeddings_folder_has_one_producer() -> None:
    files = {"kind": "precomputed", "image": "i.parquet", "text": "t.parquet"}
    pca = {"kind": "pca", "dim": 4}
    config = validate_config(
        {
            "datasets": {"d": {"kind": "folder"}},
            "encoders": {
                "clip": {"kind": "hf_clip", "model": "m"},
                "mine": files,
                "mine_pca": {**files, "adapter": pca},
                "lonely_pca": {**files, "image": "j.npy", "adapter": pca},
            },
        }
    )
    computed, precomputed, adapted_from = embedding_plan(config["encoders"])
    assert sorted(computed) == ["clip"]
    assert sorted(precomputed) == ["lonely_pca-raw", "mine"]
    assert "adapter" not in precomputed["lonely_pca-raw"]
    assert adapted_from == {"mine_pca": "mine", "lonely_pca": "lonely_pca-raw"}


def use_precomputed(
    tmp_path: Path, image: str, text: str, keep: tuple[str, ...] = (), **others: dict
) -> None:
    """Rewrite the tiny study's encoders: those named in ``keep``, then ``mine``
    (precomputed from ``mine/{dataset}/<image>`` and ``<text>``), ``mine_pca``
    (a PCA of it), then ``others``."""
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    files = {
        "kind": "precomputed",
        "image": f"mine/{{dataset}}/{image}",
        "text": f"mine/{{dataset}}/{text}",
    }
    config["encoders"] = {
        **{name: config["encoders"][name] for name in keep},
        "mine": files,
        "mine_pca": {**files, "adapter": {"kind": "pca", "dim": 2}},
        **others,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))


def test_a_precomputed_encoder_plans_without_ambiguity(tmp_path: Path) -> None:
    from .test_workflow import snakemake, tiny_study

    common = tiny_study(tmp_path)
    theirs = {"kind": "precomputed", "image": "theirs/image.npy", "text": "mine/{dataset}/text.npy"}
    use_precomputed(
        tmp_path,
        "image.parquet",
        "text.npy",
        keep=("minilm_effnet",),
        theirs_pca={**theirs, "adapter": {"kind": "pca", "dim": 2}},
    )
    for name in (
        "mine/openclipart/image.parquet",
        "mine/openclipart/text.npy",
        "mine/openclipart/text.ids.csv",
        "theirs/image.npy",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    proc = snakemake(*common, "-n", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    jobs = re.findall(r"rule (\w+):\n(?:    .*\n)*?    wildcards: ([^\n]*)", out)
    producers = {}
    for rule, wildcards in jobs:
        if rule in ("embed_shard", "embed_merge", "embed_precomputed", "adapt"):
            encoder = dict(w.split("=") for w in wildcards.split(", "))["encoder"]
            producers.setdefault(encoder, set()).add(rule)
    assert producers == {
        "minilm_effnet": {"embed_shard", "embed_merge"},
        "mine": {"embed_precomputed"},
        "mine_pca": {"adapt"},
        "theirs_pca-raw": {"embed_precomputed"},
        "theirs_pca": {"adapt"},
    }
    assert re.search(r"embed_precomputed\s+2\n", out)
    assert "mine/openclipart/text.ids.csv" in out  # the ids file is an input


@pytest.mark.workflow
def test_the_rule_writes_the_folder_and_the_adapter_projects_it(tmp_path: Path) -> None:
    from .test_workflow import snakemake, tiny_study

    common = tiny_study(tmp_path)
    manifest_file = "results/openclipart/manifest.parquet"
    proc = snakemake(*common, manifest_file, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    images, texts = split_manifest(pd.read_parquet(tmp_path / manifest_file))
    rng = np.random.default_rng(0)
    image = rng.normal(size=(len(images), 6))  # float64: converted
    text = rng.normal(size=(len(texts), 4)).astype(np.float32)
    write_npy_source(tmp_path / "mine/openclipart/image.npy", images[["image_id"]], image)
    write_parquet_source(
        tmp_path / "mine/openclipart/text.parquet",
        texts[["image_id", "caption_idx"]].iloc[::-1],
        text[::-1],
    )
    use_precomputed(tmp_path, "image.npy", "text.parquet")
    targets = [f"results/openclipart/{e}/embeddings/meta.json" for e in ("mine", "mine_pca")]
    proc = snakemake(*common, *targets, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = Embeddings.load(tmp_path / "results/openclipart/mine/embeddings")
    np.testing.assert_array_equal(out.image, image.astype(np.float32))
    np.testing.assert_array_equal(out.text, text)
    assert out.images["image_id"].tolist() == images["image_id"].tolist()
    log = (tmp_path / "results/logs/embed_precomputed/openclipart/mine.log").read_text()
    assert "mine/openclipart/image.npy: converted the embeddings from float64 to float32" in log
    assert (tmp_path / "results/benchmarks/embed_precomputed/openclipart/mine.tsv").exists()
    pca = Embeddings.load(tmp_path / "results/openclipart/mine_pca/embeddings")
    assert pca.image.shape == (len(images), 2) and pca.meta["adapter"]["dim"] == 2
