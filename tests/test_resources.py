"""Cluster requests that grow with the data (mmalign.resources): the model grows
with N at the algorithms' exponents, a tiny study asks for little, a missing
input gives the fallback, and Snakemake's plan carries the requests computed
from the files' headers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from numpy.lib import format as npy

from mmalign import layout, resources
from mmalign.config import load_config, schema_defaults

from .test_workflow import ROOT, dry_run_jobs, snakemake

CONFIG = load_config(str(ROOT / "config.yaml"))
# Every rule the model sizes from embeddings, with the wildcards that matter.
EMBEDDING_JOBS = [
    ("retrieval_protocol", {"protocol": "subset"}),
    ("retrieval_protocol", {"protocol": "full"}),
    ("retrieval_protocol", {"protocol": "multicaption"}),
    ("geometry", {}),
    ("representation_similarity", {}),
    ("gap_shift", {}),
    ("adapt", {}),
    ("mlp_ablation", {}),
    *[("learn", {"variant": v}) for v in resources.LEARN_TERMS],
]


def shape(n: int, dim: int = 384, captions: int = 1, test_share: float = 0.1) -> resources.Shape:
    test = max(2, round(test_share * n))
    return resources.Shape(
        n,
        n * captions,
        dim,
        dim,
        splits={"train": n - 2 * test, "val": test, "test": test},
        eval_images={"test": test},
        eval_texts={"test": test * captions},
    )


def cost(rule: str, wildcards: dict, s: resources.Shape, heads: bool = True) -> resources.Cost:
    if rule == "retrieval_protocol":
        return resources.retrieval_protocol(s, wildcards["protocol"], CONFIG)
    if rule == "learn":
        return resources.learn(s, wildcards["variant"], CONFIG)
    if rule == "geometry":
        return resources.geometry(s, CONFIG, threads=8)
    if rule in ("representation_similarity", "gap_shift"):
        return getattr(resources, rule)(s, CONFIG, heads)
    if rule == "adapt":
        return resources.adapt(s)
    return getattr(resources, rule)(s, CONFIG)


def slope(f, n1: int, n2: int) -> float:
    """The log-log slope of f between n1 and n2."""
    return math.log(f(n2) / f(n1)) / math.log(n2 / n1)


# --- the model ---------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "wildcards"), EMBEDDING_JOBS)
def test_requests_never_shrink_as_the_data_grows(rule: str, wildcards: dict) -> None:
    sizes = [10, 100, 1000, 4312, 20_000, 118_000]
    costs = [cost(rule, wildcards, shape(n, captions=5)) for n in sizes]
    reqs = [resources.finish(c) for c in costs]
    for key in ("seconds", "mb"):
        values = [getattr(c, key) for c in costs]
        assert values == sorted(values), (rule, key, values)
    for key in ("mem_mb", "runtime"):
        values = [r[key] for r in reqs]
        assert values == sorted(values), (rule, key, values)


def test_growth_follows_the_algorithms() -> None:
    """Exponents in N (large N, fixed d): exact retrieval time N^2 and memory N
    (blocked scoring never holds N x N); the shards' time N; the learned MLPs'
    time towards N^2 (every test pair scored); the sampled and batched stages
    flat once N passes their sample (representation) or batch (W2, t-SNE)."""

    def seconds(rule, **wc):
        return lambda n: cost(rule, wc, shape(n)).seconds

    def mb(rule, **wc):
        return lambda n: cost(rule, wc, shape(n)).mb

    assert 1.9 <= slope(seconds("retrieval_protocol", protocol="full"), 50_000, 200_000) <= 2.0
    assert 0.9 <= slope(mb("retrieval_protocol", protocol="full"), 2_000_000, 8_000_000) <= 1.0
    # ... and far below one N x N float32 matrix.
    assert mb("retrieval_protocol", protocol="full")(200_000) < 0.1 * 4 * 200_000**2 / 2**20
    # The subset protocol scores subset_size pairs whatever N: only loading grows.
    assert slope(seconds("retrieval_protocol", protocol="subset"), 50_000, 200_000) < 0.05
    shards = lambda n: resources.embed_shard(n, 5 * n, 8).seconds  # noqa: E731
    assert 0.95 <= slope(shards, 100_000, 400_000) <= 1.0
    assert 1.8 <= slope(seconds("learn", variant="mlp_contrastive"), 100_000, 400_000) <= 2.0
    # CCA: training linear in N, until the test split's exact scoring (N^2 d) takes over.
    cca = seconds("learn", variant="align_linear")
    assert 0.95 <= slope(lambda n: cca(n) - cca(10), 10_000, 40_000) <= 1.3
    for rule in ("representation_similarity", "geometry"):
        assert seconds(rule)(200_000) == pytest.approx(seconds(rule)(50_000)), rule
    # Below its sample the representation measures grow as n^2 (grams).
    rep = seconds("representation_similarity")
    assert 1.9 <= slope(lambda n: rep(n) - rep(10), 100, 1000) <= 2.05
    # W2 below its batch size: one batch of all pairs, batch^3; above it, bounded.
    w2 = lambda n: resources.w2_seconds(n, CONFIG["geometry"])  # noqa: E731
    assert slope(w2, 1000, 4000) == pytest.approx(3.0)
    assert w2(10**6) == w2(10**5) == pytest.approx(5 * w2(5000))


def test_the_default_run_is_reproduced() -> None:
    """The model at the default run's size gives its benchmark files' times and
    peaks (results/benchmarks, N = 4,312) to within the model's slack."""
    s = shape(4312)
    measured = {  # (s, max_rss MB) of the minilm_effnet_pca384 jobs
        ("retrieval_protocol", "full"): (18.3, 1078),
        ("retrieval_protocol", "subset"): (9.26, 813),
        ("geometry", ""): (70.7, 1398),
        ("learn", "mlp_contrastive"): (47.8, 943),
        ("mlp_ablation", ""): (200.4, 1026),
    }
    for (rule, wc), (seconds, rss) in measured.items():
        key = {"protocol": wc, "variant": wc}
        c = cost(rule, key, s)
        assert 0.85 * seconds <= c.seconds <= 1.6 * seconds, (rule, wc, c)
        assert 0.85 * rss <= c.mb <= 1.6 * rss, (rule, wc, c)
        req = resources.finish(c)
        assert req.mem_mb >= rss and req.runtime * 60 >= seconds


def test_a_tiny_study_asks_for_little_and_coco_for_what_it_needs() -> None:
    tiny = resources.synthetic_requests(CONFIG, images=40)
    for name, req in tiny.items():
        assert req.runtime <= 10 and req.mem_mb <= 4000, (name, req)
    coco = resources.synthetic_requests(CONFIG, images=118_000, captions_per_image=5, dim=512)
    print("\n" + resources.format_requests(coco))
    assert set(coco) == set(tiny)
    for name in coco:
        assert coco[name].mem_mb >= tiny[name].mem_mb and coco[name].runtime >= tiny[name].runtime
    # Scoring 118k x 118k pairs in 7 metrics on the CPU: hours, and the full
    # matrices (118k x 590k floats) in memory a few times.
    assert coco["retrieval_protocol[full]"].runtime >= 120
    assert coco["retrieval_protocol[full]"].mem_mb >= 3 * (118_000 * 6 * 512 * 4) / 2**20
    assert coco["embed_shard"].runtime > 4 * tiny["embed_shard"].runtime
    # Sampled stages ask for the same whatever the size: their samples are fixed.
    assert coco["representation_similarity"].runtime == tiny["representation_similarity"].runtime


def test_attempt_multiplies_and_missing_input_falls_back(tmp_path: Path) -> None:
    missing = [str(tmp_path / "nothing" / name) for name in layout.EMBEDDING_FILES]
    for rule in resources.FALLBACK:
        first = resources.request(rule, missing, CONFIG, {"scatteritem": "1-of-8"})
        assert first == resources.fallback(rule), rule
        second = resources.request(rule, missing, CONFIG, {"scatteritem": "1-of-8"}, attempt=2)
        assert (second.mem_mb, second.runtime) == (2 * first.mem_mb, 2 * first.runtime)
    c = resources.Cost(100.0, 1000.0)
    one, three = resources.finish(c, 1), resources.finish(c, 3)
    assert (three.mem_mb, three.runtime) == (3 * one.mem_mb, 3 * one.runtime)


# --- the files' headers ----------------------------------------------------------


def write_embeddings(folder: Path, n: int, dim: int = 384, captions: int = 1) -> list[str]:
    """An embeddings folder with n images and n * captions captions, each 80/10/10
    split; the matrices are sparse files (headers and zeros, never filled)."""
    folder.mkdir(parents=True, exist_ok=True)
    n_test = max(2, n // 10)
    split = np.array(["test"] * n_test + ["val"] * n_test + ["train"] * (n - 2 * n_test))
    ids = [f"img{i}" for i in range(n)]
    pd.DataFrame({"image_id": ids, "split": split, "eval_split": split}).to_parquet(
        folder / "images.parquet"
    )
    rows = np.repeat(np.arange(n), captions)
    pd.DataFrame(
        {
            "image_id": [ids[r] for r in rows],
            "caption_idx": np.tile(np.arange(captions), n).astype(np.int32),
            "split": split[rows],
            "eval_split": split[rows],
            "image_row": rows,
        }
    ).to_parquet(folder / "texts.parquet")
    for name, count in (("image", n), ("text", n * captions)):
        npy.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.float32, shape=(count, dim))
    (folder / "meta.json").write_text("{}")
    return [str(folder / name) for name in layout.EMBEDDING_FILES]


def write_manifest(path: Path, n: int, captions: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    n_test = max(2, n // 10)
    split = ["test"] * n_test + ["val"] * n_test + ["train"] * (n - 2 * n_test)
    pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n) for _ in range(captions)],
            "image_path": [f"/x/img{i}.png" for i in range(n) for _ in range(captions)],
            "caption": [f"caption {i} {c}" for i in range(n) for c in range(captions)],
            "caption_idx": [c for _ in range(n) for c in range(captions)],
            "split": [s for s in split for _ in range(captions)],
            "eval_split": [s for s in split for _ in range(captions)],
        }
    ).to_parquet(path)
    return path


def test_sizes_come_from_the_headers_alone(tmp_path: Path) -> None:
    files = write_embeddings(tmp_path / "emb", 50, dim=16, captions=3)
    s = resources.embedding_shape(files)
    assert (s.n_images, s.n_texts, s.dim_image, s.dim_text) == (50, 150, 16, 16)
    assert s.splits == {"test": 5, "val": 5, "train": 40}
    assert s.eval_images["test"] == 5 and s.eval_texts["test"] == 15
    # A header that promises 10^9 rows over a 200-byte file: read, never loaded.
    big = tmp_path / "big.npy"
    with open(big, "wb") as fh:
        npy.write_array_header_1_0(
            fh, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 512)}
        )
    assert resources.npy_shape(big) == (10**9, 512)
    assert resources.npy_shape(tmp_path / "absent.npy") is None
    assert resources.manifest_size(write_manifest(tmp_path / "m.parquet", 30, captions=5)) == (
        30,
        150,
    )


def test_the_resource_function_reads_snakemakes_job(tmp_path: Path) -> None:
    """scaled() as Snakemake calls it: Namedlists of wildcards and input, threads,
    attempt; named inputs (heads) seen; peers taken into account."""
    from snakemake.iocontainers import InputFiles, Wildcards

    files = write_embeddings(tmp_path / "big", 5000)
    wildcards = Wildcards(fromdict={"dataset": "d", "encoder": "e", "protocol": "full"})
    job_input = InputFiles(files)
    mem = resources.scaled("retrieval_protocol", "mem_mb", CONFIG)
    runtime = resources.scaled("retrieval_protocol", "runtime", CONFIG)
    expected = resources.request("retrieval_protocol", files, CONFIG, {"protocol": "full"})
    assert mem(wildcards, job_input, 2, 1) == expected.mem_mb
    assert runtime(wildcards, job_input, 2, 2) == 2 * expected.runtime

    heads = InputFiles([*files, str(tmp_path / "align.safetensors")])
    heads._set_name("embeddings", 0, len(files))
    heads._set_name("heads", len(files), len(files) + 1)
    with_heads = resources.scaled("gap_shift", "runtime", CONFIG)(wildcards, heads, 2, 1)
    without = resources.scaled("gap_shift", "runtime", CONFIG)(wildcards, job_input, 2, 1)
    assert with_heads >= without

    small = write_manifest(tmp_path / "small/manifest.parquet", 100)
    large = write_manifest(tmp_path / "large/manifest.parquet", 100_000)
    shard = Wildcards(fromdict={"scatteritem": "1-of-8"})
    alone = resources.scaled("embed_shard", "runtime", CONFIG)
    with_peers = resources.scaled("embed_shard", "runtime", CONFIG, [str(small), str(large)])
    assert alone(shard, InputFiles([str(small)]), 2, 1) < alone(
        shard, InputFiles([str(large)]), 2, 1
    )
    assert with_peers(shard, InputFiles([str(small)]), 2, 1) == alone(
        shard, InputFiles([str(large)]), 2, 1
    )


def test_cli_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    resources.main(["--images", "1000", "--captions-per-image", "5"])
    out = capsys.readouterr().out
    assert "retrieval_protocol[full]" in out and "mem_mb" in out
    assert schema_defaults("retrieval")["protocols"]  # the CLI's defaults exist


# --- through Snakemake -------------------------------------------------------------


def planned(folder: Path) -> dict[tuple[str, str], dict[str, int]]:
    """(rule, wildcards) -> mem_mb and runtime of every job of a dry run in ``folder``."""
    proc = snakemake("-n", "--directory", str(folder), cwd=folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = {}
    for rule, block in dry_run_jobs(proc.stdout):
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        items = dict(i.split("=", 1) for i in res.group(1).split(", ") if "=" in i) if res else {}
        if "mem_mb" in items:
            key = (rule, wc.group(1) if wc else "")
            jobs[key] = {k: int(items[k]) for k in ("mem_mb", "runtime")}
    return jobs


def fake_study(folder: Path, n: int) -> None:
    """The default config with one encoder, its manifest and embeddings already there."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["encoders"] = {"enc": config["encoders"]["minilm_effnet"]}
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    write_manifest(folder / layout.path("manifest", dataset="openclipart"), n)
    emb = folder / layout.path("embeddings", dataset="openclipart", encoder="enc")
    write_embeddings(emb, n)
    (emb / "meta.json").write_text(json.dumps({"n_images": n}))


@pytest.mark.workflow
def test_snakemake_plans_larger_requests_for_larger_embeddings(tmp_path: Path) -> None:
    fake_study(tmp_path / "small", 200)
    fake_study(tmp_path / "large", 20_000)
    small, large = planned(tmp_path / "small"), planned(tmp_path / "large")
    grown = [key for key in small if key[0] in resources.FALLBACK and key in large]
    planned_rules = {rule for rule, _ in grown}
    assert {"retrieval_protocol", "geometry", "learn", "gap_shift", "mlp_ablation"} <= (
        planned_rules
    ), planned_rules
    for key in grown:
        for res in ("mem_mb", "runtime"):
            assert large[key][res] >= small[key][res], (key, res, small[key], large[key])
    full = next(k for k in grown if k[0] == "retrieval_protocol" and "protocol=full" in k[1])
    assert large[full]["mem_mb"] > small[full]["mem_mb"]
    assert large[full]["runtime"] > small[full]["runtime"]
    # The plan's numbers are the model's, from the files' headers.
    files = [
        str(tmp_path / "large" / f)
        for f in layout.embedding_files(dataset="openclipart", encoder="enc")
    ]
    config = load_config(str(tmp_path / "large/config.yaml"))
    expected = resources.request("retrieval_protocol", files, config, {"protocol": "full"})
    assert large[full] == {"mem_mb": expected.mem_mb, "runtime": expected.runtime}
    # A tiny study asks for little (the table rules' inputs are not there: fallbacks).
    for key in (k for k in grown if k[0] not in resources.TABLE_RULES):
        assert small[key]["runtime"] <= 10 and small[key]["mem_mb"] <= 4000, (key, small[key])
