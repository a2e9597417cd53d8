"""The geometry stage against independent references: POT called directly, NumPy,
SciPy's ``sqrtm``, and closed forms (a shifted cloud, isotropic Gaussians)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ot
import pandas as pd
import pytest
import scipy.linalg
import scipy.special
import torch
from PIL import Image
from safetensors.torch import load_file

from mmalign import layout
from mmalign.config import validate_config
from mmalign.embed import Embeddings, write_embeddings
from mmalign.geometry import (
    BOUNDARY_COLUMNS,
    BOUNDARY_GRID,
    GeometryConfig,
    GeometryError,
    Pairs,
    cosine_stats,
    figures,
    first_caption_rows,
    gaussian_w2,
    gaussian_w2_from_moments,
    gaussian_w2_squared,
    gaussian_w2_squared_from_moments,
    geometry_job,
    geometry_summary,
    matched_pairs,
    modality_gap,
    modality_svm,
    precision_upper_bounds,
    rank_by_cosine,
    w2_batch_indices,
    wasserstein2,
    wasserstein2_batched,
    wasserstein2_squared,
)
from mmalign.geometry.aligned import (
    aligned_geometry_job,
    aligned_pairs,
    pair_retrieval_example,
    space_summary,
    space_tsne,
)
from mmalign.learn.align import AlignmentHeads, AlignOptions, standardisation
from mmalign.learn.common import pair_splits, write_safetensors
from mmalign.plotting import save_figure

CFG = {
    "normalize": False,
    "w2_batch_size": 5000,
    "w2_batches": 5,
    "tsne_samples": 2000,
    "heatmap_pairs": 10,
}


def clouds(n: int = 40, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(n, d)) * 1.5 + 0.7


def direct_emd2(x: np.ndarray, y: np.ndarray) -> float:
    """The reference: POT's exact solver called as its documentation shows; its
    value is the optimal cost under the squared Euclidean ground cost, W2^2."""
    return float(ot.emd2(ot.unif(len(x)), ot.unif(len(y)), ot.dist(x, y), numItermax=10**7))


def direct_w2(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(direct_emd2(x, y)))


# ---------------------------------------------------------------- Wasserstein-2


def test_w2_equals_a_direct_emd2_call() -> None:
    x, y = clouds()
    assert wasserstein2(x, y) == pytest.approx(direct_w2(x, y), rel=1e-12)
    # Unequal sizes too (uniform weights 1/n and 1/m).
    assert wasserstein2(x[:30], y) == pytest.approx(direct_w2(x[:30], y), rel=1e-12)


def test_squared_w2_is_the_raw_emd2_cost() -> None:
    x, y = clouds()
    assert wasserstein2_squared(x, y) == pytest.approx(direct_emd2(x, y), rel=1e-12)
    assert wasserstein2_squared(x[:30], y) == pytest.approx(direct_emd2(x[:30], y), rel=1e-12)
    # The cost by hand from POT's plan: sum_ij P_ij ||x_i - y_j||^2.
    plan = ot.emd(ot.unif(len(x)), ot.unif(len(y)), ot.dist(x, y), numItermax=10**7)
    by_hand = float(np.sum(plan * ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)))
    assert wasserstein2_squared(x, y) == pytest.approx(by_hand, rel=1e-9)
    # A rigid shift: W2^2 = |shift|^2 exactly.
    shift = np.array([3.0, -4.0, 0.0, 1.0, 0.0])
    assert wasserstein2_squared(x, x + shift) == pytest.approx(26.0, rel=1e-9)


def test_w2_to_itself_is_zero_and_to_a_shift_is_its_norm() -> None:
    x, _ = clouds(n=50, d=6)
    shift = np.array([3.0, -4.0, 0.0, 1.0, 0.0, 2.0])
    assert wasserstein2(x, x) == pytest.approx(0.0, abs=1e-6)
    assert wasserstein2(x, x + shift) == pytest.approx(np.linalg.norm(shift), rel=1e-9)
    # Batched over matched pairs: every batch is the same rigid shift.
    batched = wasserstein2_batched(x, x + shift, batch_size=20, n_batches=3, seed=1)
    assert batched.values == pytest.approx([np.linalg.norm(shift)] * 3, rel=1e-9)
    assert batched.std == pytest.approx(0.0, abs=1e-9)


def test_w2_batches_are_seeded_disjoint_pairs_and_match_direct_calls() -> None:
    x, y = clouds(n=90, d=4, seed=3)
    batches = w2_batch_indices(90, batch_size=30, n_batches=3, seed=7)
    assert [len(b) for b in batches] == [30, 30, 30]
    assert sorted(np.concatenate(batches).tolist()) == list(range(90))  # disjoint, all pairs
    result = wasserstein2_batched(x, y, batch_size=30, n_batches=3, seed=7)
    expected = [direct_w2(x[b], y[b]) for b in batches]
    assert result.values == pytest.approx(expected, rel=1e-12)
    assert result.mean == pytest.approx(np.mean(expected))
    assert result.std == pytest.approx(np.std(expected))
    # The raw emd2 costs, summarised on their own (not the square of the W2 mean).
    costs = [direct_emd2(x[b], y[b]) for b in batches]
    assert result.squared_values == pytest.approx(costs, rel=1e-12)
    assert result.squared_mean == pytest.approx(np.mean(costs))
    assert result.squared_std == pytest.approx(np.std(costs))
    assert result.squared_mean != pytest.approx(result.mean**2, rel=1e-6)
    # More batches than one permutation holds: a fresh permutation, same size.
    assert [len(b) for b in w2_batch_indices(90, 40, 5, seed=7)] == [40] * 5


def test_w2_fewer_pairs_than_a_batch_is_one_batch_of_all() -> None:
    x, y = clouds(n=25)
    result = wasserstein2_batched(x, y, batch_size=5000, n_batches=5, seed=0)
    assert result.batch_size == 25
    assert result.values == pytest.approx([direct_w2(x, y)])
    assert result.std == 0.0


def test_w2_does_not_depend_on_the_number_of_workers() -> None:
    x, y = clouds(n=120, d=3, seed=5)
    one = wasserstein2_batched(x, y, batch_size=40, n_batches=4, seed=2, workers=1)
    two = wasserstein2_batched(x, y, batch_size=40, n_batches=4, seed=2, workers=2)
    assert one.values == two.values  # bit for bit


def test_w2_fails_loudly_when_the_solver_stops_early() -> None:
    x, y = clouds(n=60)
    with pytest.raises(GeometryError, match="did not reach the optimum"):
        wasserstein2(x, y, num_itermax=5)


def test_batched_w2_approaches_the_gaussian_closed_form_as_batches_grow() -> None:
    """Empirical W2 between samples overestimates the population W2 by a bias
    that shrinks with the sample size; here N(0, I) vs N((1, 0), diag(4, 1/4))
    in 2-D, whose W2 is sqrt(1 + (2 - 1)^2 + (1/2 - 1)^2) = 1.5."""
    rng = np.random.default_rng(0)
    n = 20_000
    x = rng.normal(size=(n, 2))
    y = rng.normal(size=(n, 2)) * np.array([2.0, 0.5]) + np.array([1.0, 0.0])
    exact = gaussian_w2_from_moments(
        np.zeros(2), np.eye(2), np.array([1.0, 0.0]), np.diag([4, 0.25])
    )
    assert exact == pytest.approx(1.5)
    errors = [
        abs(wasserstein2_batched(x, y, size, n_batches=6, seed=0).mean - exact)
        for size in (10, 100, 800)
    ]
    print("batch sizes 10, 100, 800: |W2 - closed form| =", errors)
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05
    # The closed form of Gaussians fitted to the whole samples is close as well.
    assert gaussian_w2(x, y) == pytest.approx(exact, abs=0.03)


# ---------------------------------------------------------------- Gaussian W2


def test_gaussian_w2_closed_forms() -> None:
    d = 4
    mean1, mean2 = np.zeros(d), np.array([1.0, 2.0, 0.0, -2.0])
    # Isotropic: W2^2 = |m1 - m2|^2 + d (a - b)^2.
    iso = gaussian_w2_from_moments(mean1, 4.0 * np.eye(d), mean2, 9.0 * np.eye(d))
    assert iso == pytest.approx(np.sqrt(9.0 + d * (2.0 - 3.0) ** 2))
    # General SPD covariances against SciPy's sqrtm.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    root2 = scipy.linalg.sqrtm(cov2)
    cross = scipy.linalg.sqrtm(root2 @ cov1 @ root2)
    reference = np.sqrt(np.sum((mean1 - mean2) ** 2) + np.trace(cov1 + cov2 - 2 * np.real(cross)))
    assert gaussian_w2_from_moments(mean1, cov1, mean2, cov2) == pytest.approx(reference)
    squared = gaussian_w2_squared_from_moments(mean1, cov1, mean2, cov2)
    assert squared == pytest.approx(reference**2)
    iso_squared = gaussian_w2_squared_from_moments(mean1, 4.0 * np.eye(d), mean2, 9.0 * np.eye(d))
    assert iso_squared == pytest.approx(9.0 + d * (2.0 - 3.0) ** 2)


def test_gaussian_w2_of_samples_and_of_rank_deficient_clouds() -> None:
    x, y = clouds(n=200, d=3)
    expected = gaussian_w2_from_moments(
        x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    )
    assert gaussian_w2(x, y) == pytest.approx(expected)
    assert gaussian_w2_squared(x, y) == pytest.approx(expected**2)
    # Fewer points than dimensions: singular covariances, tiny negative
    # eigenvalues from rounding; the distance is still finite and 0 to itself.
    thin, _ = clouds(n=5, d=20)
    assert gaussian_w2(thin, thin) == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(gaussian_w2(thin, thin + 1.0))
    assert gaussian_w2(thin, thin + 1.0) == pytest.approx(np.sqrt(20.0), rel=1e-6)


# ---------------------------------------------------------------- modality gap, cosine


def test_gap_of_a_shifted_cloud_is_the_shift() -> None:
    x, _ = clouds(n=30, d=3)
    shift = np.array([1.0, 2.0, 2.0])
    assert modality_gap(x, x + shift) == pytest.approx(3.0)


def test_normalized_gap_matches_numpy() -> None:
    x, y = clouds(n=30, d=6)
    unit_x = x / np.linalg.norm(x, axis=1, keepdims=True)
    unit_y = y / np.linalg.norm(y, axis=1, keepdims=True)
    expected = np.linalg.norm(unit_x.mean(0) - unit_y.mean(0))
    assert modality_gap(x, y, normalize=True) == pytest.approx(expected)
    assert modality_gap(x, y) == pytest.approx(np.linalg.norm(x.mean(0) - y.mean(0)))


def test_cosine_stats_match_numpy() -> None:
    x, y = clouds(n=20, d=7)
    unit_x = x / np.linalg.norm(x, axis=1, keepdims=True)
    unit_y = y / np.linalg.norm(y, axis=1, keepdims=True)
    full = unit_x @ unit_y.T
    off = ~np.eye(20, dtype=bool)
    stats = cosine_stats(x, y, seed=0)
    assert stats["matching"]["mean"] == pytest.approx(np.diag(full).mean())
    assert stats["matching"]["std"] == pytest.approx(np.diag(full).std())
    assert stats["matching"]["count"] == 20
    assert stats["non_matching"]["mean"] == pytest.approx(full[off].mean())
    assert stats["non_matching"]["std"] == pytest.approx(full[off].std())
    assert stats["non_matching"]["count"] == 380
    assert stats["non_matching"]["sampled"] is False
    assert stats["margin"] == pytest.approx(np.diag(full).mean() - full[off].mean())
    within = (unit_x @ unit_x.T)[off]
    assert stats["within_image"]["mean"] == pytest.approx(within.mean())


def test_cosine_stats_sample_non_matching_pairs_when_there_are_many() -> None:
    x, y = clouds(n=300, d=5)
    full = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
        y / np.linalg.norm(y, axis=1, keepdims=True)
    ).T
    stats = cosine_stats(x, y, seed=0, max_pairs=20_000)
    assert stats["non_matching"]["sampled"] is True
    assert stats["non_matching"]["count"] == 20_000
    off = full[~np.eye(300, dtype=bool)]
    assert stats["non_matching"]["mean"] == pytest.approx(off.mean(), abs=4 * off.std() / 140)
    assert cosine_stats(x, y, seed=0, max_pairs=20_000) == stats  # seeded


def test_rank_by_cosine_ranks_descending() -> None:
    candidates = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    order, scores = rank_by_cosine(np.array([1.0, 0.1]), candidates)
    assert order.tolist() == [0, 2, 1, 3]
    assert scores[3] == pytest.approx(-1 / np.sqrt(1.01))


# ---------------------------------------------------------------- pairs, mismatch


def test_pairs_take_each_images_first_caption() -> None:
    texts = pd.DataFrame(
        {
            "image_id": ["a", "a", "b", "b", "c"],
            "caption_idx": [1, 0, 0, 1, 0],
            "image_row": [0, 0, 1, 1, 2],
        }
    )
    assert first_caption_rows(texts).tolist() == [1, 2, 4]


def test_a_dimension_mismatch_gives_nulls_with_a_note() -> None:
    rng = np.random.default_rng(0)
    pairs = Pairs(
        rng.normal(size=(10, 1280)), rng.normal(size=(10, 384)), np.arange(10), np.arange(10)
    )
    summary = geometry_summary(pairs, GeometryConfig(), seed=0)
    for key in ("modality_gap", "w2_mean", "w2_std", "w2_batches", "w2_gaussian", "cosine",
                "w2_squared_mean", "w2_squared_std", "w2_squared_batches",
                "w2_gaussian_squared"):  # fmt: skip
        assert summary[key] is None
    assert summary["dims"] == {"image": 1280, "text": 384}
    assert "image 1280-d vs text 384-d" in summary["notes"]["wasserstein2"]
    assert "use an adapter (pca)" in summary["notes"]["dimensions"]
    with pytest.raises(GeometryError, match="image 1280-d vs text 384-d"):
        modality_gap(pairs.image, pairs.text)


def test_upper_bounds_of_precision() -> None:
    table = precision_upper_bounds(k_max=10, captions_per_image=5)
    k = np.arange(1, 11)
    assert table["image_to_text"].tolist() == pytest.approx(np.where(k <= 5, 1.0, 5 / k))
    assert table["text_to_image"].tolist() == pytest.approx(1 / k)
    assert precision_upper_bounds(3, 1)["image_to_text"].tolist() == pytest.approx(
        [1, 1 / 2, 1 / 3]
    )


# ---------------------------------------------------------------- the rule, figures


def tiny_study(
    folder: Path, dim_image: int, dim_text: int, n_images: int = 16, held_out: int = 0
) -> Path:
    """An embeddings folder (two captions per image) and its manifest, with real
    image files: PNGs (one transparent) and an SVG. The last ``held_out`` images
    are the test split, the ``held_out`` before them validation, the rest train."""
    rng = np.random.default_rng(0)
    split = ["train"] * (n_images - 2 * held_out) + ["val"] * held_out + ["test"] * held_out
    image_dir = folder / "images"
    image_dir.mkdir(parents=True)
    paths = []
    for i in range(n_images):
        if i == 3:
            path = image_dir / f"drawing_{i}.svg"
            path.write_text(
                '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
                '<rect width="40" height="20" fill="#2ca02c"/></svg>'
            )
        else:
            path = image_dir / f"drawing_{i}.png"
            mode = "RGBA" if i == 0 else "RGB"
            Image.new(mode, (30 + i, 20), (20 * i % 255, 100, 200, 128)).save(path)
        paths.append(str(path))
    manifest = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(n_images) for _ in range(2)],
            "image_path": [p for p in paths for _ in range(2)],
            "caption": [f"drawing {i} ${c} caption" for i in range(n_images) for c in range(2)],
            "caption_idx": [c for _ in range(n_images) for c in range(2)],
            "split": [s for s in split for _ in range(2)],
        }
    )
    manifest.to_parquet(folder / "manifest.parquet", index=False)
    images = pd.DataFrame({"image_id": [f"img{i}" for i in range(n_images)], "split": split})
    texts = manifest[["image_id", "caption_idx", "split"]].assign(
        image_row=np.repeat(np.arange(n_images), 2)
    )
    base = rng.normal(size=(n_images, max(dim_image, dim_text)))
    image = base[:, :dim_image] + 0.1 * rng.normal(size=(n_images, dim_image))
    text = (
        np.repeat(base[:, :dim_text], 2, axis=0)
        + 0.3
        + 0.1 * rng.normal(size=(2 * n_images, dim_text))
    )
    meta = {"dim_image": dim_image, "dim_text": dim_text}
    write_embeddings(folder / "embeddings", image, text, images, texts, meta)
    return folder


def run_job(folder: Path) -> dict:
    return geometry_job(
        folder / "embeddings",
        folder / "manifest.parquet",
        {**CFG, "tsne_samples": 12, "heatmap_pairs": 6},
        seed=0,
        threads=1,
        out_json=folder / "out" / "geometry.json",
        out_tsne=folder / "out" / "tsne.parquet",
        out_boundary=folder / "out" / "tsne_boundary.parquet",
        figures_dir=folder / "out" / "figures",
        label={"dataset": "tiny", "encoder": folder.name},
    )


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The geometry rule run once on a same-space and on a mismatched tiny study."""
    tmp = tmp_path_factory.mktemp("geometry")
    folders = {
        "same": tiny_study(tmp / "same", 8, 8),
        "mismatch": tiny_study(tmp / "mismatch", 12, 6),
    }
    for folder in folders.values():
        run_job(folder)
    return folders


def assert_figures(folder: Path) -> None:
    for name in layout.GEOMETRY_FIGURES:
        png, pdf = folder / f"{name}.png", folder / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
        assert pdf.read_bytes()[:5] == b"%PDF-", pdf
        assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000


def test_geometry_job_on_tiny_embeddings(studies: dict[str, Path]) -> None:
    folder = studies["same"]
    written = json.loads((folder / "out" / "geometry.json").read_text())
    assert written["n_pairs"] == 16 and written["n_texts"] == 32  # first captions only
    assert written["config"] == CFG | {"tsne_samples": 12, "heatmap_pairs": 6}
    pairs = matched_pairs(Embeddings.load(folder / "embeddings"))
    assert pairs.text_rows.tolist() == list(range(0, 32, 2))
    assert written["modality_gap"] == pytest.approx(modality_gap(pairs.image, pairs.text))
    assert written["w2_mean"] == pytest.approx(direct_w2(pairs.image, pairs.text), rel=1e-6)
    assert len(written["w2_batches"]) == 1 and written["w2_std"] == 0.0
    cost = direct_emd2(pairs.image.astype(np.float64), pairs.text.astype(np.float64))
    assert written["w2_squared_mean"] == pytest.approx(cost, rel=1e-9)
    assert written["w2_squared_batches"] == pytest.approx([cost], rel=1e-9)
    assert written["w2_squared_std"] == 0.0
    assert written["w2_gaussian"] == pytest.approx(gaussian_w2(pairs.image, pairs.text))
    assert written["w2_gaussian_squared"] == pytest.approx(written["w2_gaussian"] ** 2)
    assert written["cosine"]["matching"]["mean"] > written["cosine"]["non_matching"]["mean"]
    assert 0.5 <= written["tsne_svm_accuracy"] <= 1.0
    points = pd.read_parquet(folder / "out" / "tsne.parquet")
    assert len(points) == 24 and set(points["modality"]) == {"image", "text"}
    assert_figures(folder / "out" / "figures")
    # Same config, same numbers (W2 timing aside).
    again = geometry_summary(pairs, GeometryConfig(**written["config"]), seed=0)
    for key in ("modality_gap", "w2_batches", "w2_squared_batches", "w2_gaussian", "cosine"):
        assert again[key] == written[key]


def test_geometry_job_on_a_dimension_mismatch_writes_nulls_and_na_figures(
    studies: dict[str, Path],
) -> None:
    folder = studies["mismatch"]
    written = json.loads((folder / "out" / "geometry.json").read_text())
    assert written["modality_gap"] is None and written["w2_mean"] is None
    assert written["notes"]["modality_gap"].startswith("n/a: image 12-d vs text 6-d")
    assert written["tsne_svm_accuracy"] is None
    assert len(pd.read_parquet(folder / "out" / "tsne.parquet")) == 0
    assert_figures(folder / "out" / "figures")


def test_grid_and_upper_bound_figures(studies: dict[str, Path], tmp_path: Path) -> None:
    same, mismatch = studies["same"], studies["mismatch"]
    written = figures.write_tsne_grid(
        summaries=[same / "out" / "geometry.json", mismatch / "out" / "geometry.json"],
        points=[same / "out" / "tsne.parquet", mismatch / "out" / "tsne.parquet"],
        boundaries=[folder / "out" / "tsne_boundary.parquet" for folder in (same, mismatch)],
        panels=[["tiny", "same"], ["tiny", "mismatch"]],
        datasets=["tiny"],
        encoders=["same", "mismatch"],
        out_stem=tmp_path / "figures" / "tsne_grid",
    )
    stem = tmp_path / "figures" / "precision_upper_bounds"
    figure = figures.precision_upper_bounds_figure(precision_upper_bounds(10, 5), 5)
    written += save_figure(figure, stem)
    assert [p.name for p in written] == [
        "tsne_grid.png",
        "tsne_grid.pdf",
        "precision_upper_bounds.png",
        "precision_upper_bounds.pdf",
    ]
    assert all(p.stat().st_size > 1000 for p in written)


def test_a_manifest_that_does_not_match_the_embeddings_is_refused(tmp_path: Path) -> None:
    folder = tiny_study(tmp_path / "same", 8, 8)
    manifest = pd.read_parquet(folder / "manifest.parquet")
    manifest.iloc[:-1].to_parquet(folder / "manifest.parquet", index=False)
    with pytest.raises(GeometryError, match="do not match"):
        run_job(folder)


def test_the_rule_declares_every_figure_the_library_writes(studies: dict[str, Path]) -> None:
    rules = (Path(__file__).resolve().parents[1] / "rules" / "geometry.smk").read_text()
    assert re.search(r"for name in layout\.GEOMETRY_FIGURES\b", rules)
    expected = {f"{n}.{e}" for n in layout.GEOMETRY_FIGURES for e in layout.FIGURE_FORMATS}
    for folder in studies.values():
        assert {p.name for p in (folder / "out" / "figures").iterdir()} == expected


def test_the_boundary_file_holds_the_svm_decision_values(studies: dict[str, Path]) -> None:
    out = studies["same"] / "out"
    points = pd.read_parquet(out / "tsne.parquet")
    boundary = pd.read_parquet(out / "tsne_boundary.parquet")
    assert list(boundary.columns) == list(BOUNDARY_COLUMNS)
    assert len(boundary) == BOUNDARY_GRID**2
    assert boundary.groupby("row")["y"].nunique().eq(1).all()  # rows run along y
    assert boundary.groupby("col")["x"].nunique().eq(1).all()
    assert boundary["x"].min() < points["x"].min() and boundary["x"].max() > points["x"].max()
    assert boundary["y"].min() < points["y"].min() and boundary["y"].max() > points["y"].max()
    # The figure's boundary is the fit the summary's accuracy comes from.
    svm, accuracy = modality_svm(points)
    assert accuracy == json.loads((out / "geometry.json").read_text())["tsne_svm_accuracy"]
    decision = svm.decision_function(boundary[["x", "y"]].to_numpy())
    np.testing.assert_array_equal(boundary["decision"].to_numpy(), decision)
    empty = pd.read_parquet(studies["mismatch"] / "out" / "tsne_boundary.parquet")
    assert len(empty) == 0 and list(empty.columns) == list(BOUNDARY_COLUMNS)


# ---------------------------------------------------------------- the aligned space


ALIGN = {"dim": 4, "hidden": 8, "dropout": 0.0}


def learn_config() -> dict:
    """The schema's learn defaults, with small heads."""
    config = validate_config(
        {
            "datasets": {"t": {"kind": "folder", "root": "x"}},
            "encoders": {"e": {"kind": "hf_clip", "model": "m"}},
        }
    )
    learn = config["learn"]
    learn["align"].update(ALIGN)
    return learn


def random_heads(folder: Path, learn: dict) -> Path:
    """Untrained heads on the study's train split, stored as rule learn stores them."""
    emb = Embeddings.load(folder / "embeddings")
    train = pair_splits(emb, learn["max_pairs"], 0).train
    torch.manual_seed(0)
    model = AlignmentHeads(standardisation(train), AlignOptions.from_config(learn["align"]))
    path = folder / "learn" / "align.safetensors"
    write_safetensors(model.state_dict(), {"variant": "align"}, path)
    return path


def heads_by_hand(state: dict[str, torch.Tensor], modality: str, x: np.ndarray) -> np.ndarray:
    """Standardise, Linear, exact GELU, Linear, in NumPy float64 from the stored tensors."""
    w = {k: v.double().numpy() for k, v in state.items()}
    z = (x.astype(np.float64) - w[f"{modality}_mean"]) / w[f"{modality}_std"]
    h = z @ w[f"{modality}_head.net.0.weight"].T + w[f"{modality}_head.net.0.bias"]
    h = 0.5 * h * (1.0 + scipy.special.erf(h / np.sqrt(2.0)))
    return h @ w[f"{modality}_head.net.2.weight"].T + w[f"{modality}_head.net.2.bias"]


def run_aligned_job(folder: Path, learn: dict) -> dict:
    return aligned_geometry_job(
        folder / "embeddings",
        folder / "manifest.parquet",
        folder / "learn" / "align.safetensors",
        {**CFG, "tsne_samples": 12, "heatmap_pairs": 6},
        learn,
        seed=0,
        threads=1,
        out_json=folder / "out" / "aligned_geometry.json",
        figures_dir=folder / "out" / "figures",
        label={"dataset": "tiny", "encoder": folder.name},
    )


@pytest.fixture(scope="module")
def aligned_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The aligned_geometry rule run once with equal and with unequal dimensions
    (20 images: 12 train, 4 validation, 4 test pairs)."""
    tmp = tmp_path_factory.mktemp("aligned")
    learn = learn_config()
    folders = {
        "same": tiny_study(tmp / "same", 8, 8, n_images=20, held_out=4),
        "mismatch": tiny_study(tmp / "mismatch", 12, 6, n_images=20, held_out=4),
    }
    for folder in folders.values():
        random_heads(folder, learn)
        run_aligned_job(folder, learn)
    return folders


def test_aligned_points_are_the_heads_projections_of_the_test_split(
    aligned_studies: dict[str, Path],
) -> None:
    learn = learn_config()
    for name, folder in aligned_studies.items():
        emb = Embeddings.load(folder / "embeddings")
        raw, aligned = aligned_pairs(emb, folder / "learn" / "align.safetensors", learn, 0)
        # The test split's first-caption pairs: images 16-19, caption rows 32, 34, 36, 38.
        assert raw.image_rows.tolist() == [16, 17, 18, 19], name
        assert raw.text_rows.tolist() == [32, 34, 36, 38], name
        np.testing.assert_array_equal(raw.image, emb.image[16:20])
        np.testing.assert_array_equal(raw.text, emb.text[32:40:2])
        state = load_file(str(folder / "learn" / "align.safetensors"))
        np.testing.assert_allclose(aligned.image, heads_by_hand(state, "image", raw.image),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        np.testing.assert_allclose(aligned.text, heads_by_hand(state, "text", raw.text),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        assert aligned.image.shape == aligned.text.shape == (4, ALIGN["dim"])
        # The summary's numbers are of those points.
        written = json.loads((folder / "out" / "aligned_geometry.json").read_text())
        assert written["n_pairs"] == 4 and written["split"] == "test"
        by_hand = heads_by_hand(state, "image", raw.image), heads_by_hand(state, "text", raw.text)
        space = written["spaces"]["aligned"]
        assert space["dims"] == {"image": 4, "text": 4}
        assert space["modality_gap"] == pytest.approx(modality_gap(*by_hand), rel=1e-5)
        assert space["modality_gap_normalized"] == pytest.approx(
            modality_gap(*by_hand, normalize=True), rel=1e-5
        )
        assert 0.5 <= space["tsne_svm_accuracy"] <= 1.0


def test_aligned_before_panel_is_na_only_for_unequal_dimensions(
    aligned_studies: dict[str, Path],
) -> None:
    same = json.loads((aligned_studies["same"] / "out" / "aligned_geometry.json").read_text())
    raw = same["spaces"]["raw"]
    assert raw["dims"] == {"image": 8, "text": 8} and raw["modality_gap"] is not None
    assert 0.5 <= raw["tsne_svm_accuracy"] <= 1.0 and raw["notes"] == {}
    mismatch = aligned_studies["mismatch"] / "out" / "aligned_geometry.json"
    raw = json.loads(mismatch.read_text())["spaces"]["raw"]
    assert raw["modality_gap"] is None and raw["tsne_svm_accuracy"] is None
    assert raw["cosine"] is None
    assert raw["notes"]["modality_gap"].startswith("n/a: image 12-d vs text 6-d")

    # The figure: the left panel states n/a for unequal dimensions only; the right never.
    learn, cfg = learn_config(), GeometryConfig(**{**CFG, "tsne_samples": 12})
    for name, folder in aligned_studies.items():
        emb = Embeddings.load(folder / "embeddings")
        pairs = aligned_pairs(emb, folder / "learn" / "align.safetensors", learn, 0)
        panels = []
        for space, p in zip(("raw", "aligned"), pairs, strict=True):
            points, boundary, _, note = space_tsne(p, cfg, 0)
            assert (note is None) == (space == "aligned" or name == "same")
            summary = {**space_summary(p, cfg, 0, space), "config": asdict(cfg)}
            panels.append(figures.TsnePanel(points, boundary, summary))
        if name == "same":  # the same seeded test pairs in both panels
            assert panels[0].points["pair"].tolist() == panels[1].points["pair"].tolist()
        fig = figures.before_after_tsne_figure(*panels, "tiny")
        left, right = ("\n".join(t.get_text() for t in ax.texts) for ax in fig.axes[:2])
        assert ("n/a" in left) == (name == "mismatch")
        assert "n/a" not in right and "MG = " in right


def test_aligned_figures_are_written(aligned_studies: dict[str, Path]) -> None:
    expected = {f"{n}.{e}" for n in layout.ALIGNED_FIGURES.values() for e in layout.FIGURE_FORMATS}
    for folder in aligned_studies.values():
        out = folder / "out" / "figures"
        assert {p.name for p in out.iterdir()} == expected
        for name in layout.ALIGNED_FIGURES.values():
            png, pdf = out / f"{name}.png", out / f"{name}.pdf"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
            assert pdf.read_bytes()[:5] == b"%PDF-", pdf
            assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    rules = (Path(__file__).resolve().parents[1] / "rules" / "geometry.smk").read_text()
    assert re.search(r"for name in layout\.ALIGNED_FIGURES\.values\(\)", rules)


def test_aligned_retrieval_examples_rank_test_pairs_by_cosine(
    aligned_studies: dict[str, Path],
) -> None:
    folder = aligned_studies["mismatch"]
    emb = Embeddings.load(folder / "embeddings")
    _, aligned = aligned_pairs(emb, folder / "learn" / "align.safetensors", learn_config(), 0)
    written = json.loads((folder / "out" / "aligned_geometry.json").read_text())
    for direction, (queries, gallery) in {
        "t2i": (aligned.text, aligned.image),
        "i2t": (aligned.image, aligned.text),
    }.items():
        query, order, scores, relevant = pair_retrieval_example(aligned, direction, 0)
        q = queries[query] / np.linalg.norm(queries[query])
        expected = gallery @ q / np.linalg.norm(gallery, axis=1)
        np.testing.assert_allclose(scores, expected, rtol=1e-5)
        assert (np.diff(scores[order]) <= 0).all()
        assert relevant.tolist() == [i == query for i in range(4)]
        example = written["retrieval_examples"][direction]
        assert example["query_pair"] == query and example["n_candidates"] == 4
        assert example["true_rank"] == int(np.flatnonzero(order == query)[0]) + 1
        rows = aligned.text_rows if direction == "t2i" else aligned.image_rows
        assert example["query_row"] == rows[query]


def test_raw_na_figures_name_their_aligned_counterparts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_study(tmp_path / "mismatch", 12, 6)
    messages: list[str] = []
    draw_na = figures.draw_na

    def spy(ax: object, message: str, *args: int) -> None:
        messages.append(message)
        draw_na(ax, message, *args)

    monkeypatch.setattr(figures, "draw_na", spy)
    na_figure = figures.na_figure
    monkeypatch.setattr(
        figures, "na_figure", lambda message, *a: messages.append(message) or na_figure(message, *a)
    )
    for aligned in (False, True):
        messages.clear()
        geometry_job(folder / "embeddings", folder / "manifest.parquet", CFG, 0, 1,
                     folder / "out" / "geometry.json", folder / "out" / "tsne.parquet",
                     folder / "out" / "tsne_boundary.parquet", folder / "out" / "figures",
                     aligned_figures=aligned)  # fmt: skip
        assert len(messages) == len(layout.GEOMETRY_FIGURES)
        assert all(m.startswith("n/a: image 12-d vs text 6-d") for m in messages)
        named = {name for name in layout.ALIGNED_FIGURES.values() for m in messages
                 if f"{name}.png" in m}  # fmt: skip
        assert named == (set(layout.ALIGNED_FIGURES.values()) if aligned else set())
