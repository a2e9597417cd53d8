"""Gap-shift sweep: lambda = 0 is the original space, the gap scales by |1 - lambda|."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmalign.embed import Embeddings
from mmalign.gapshift import (
    SPACE_NAMES,
    GapShiftOptions,
    centroid_delta,
    gap_shift_figure,
    shift,
    sweep,
)
from mmalign.layout import DIRECTION_NAMES
from mmalign.learn.common import PairSplit
from mmalign.plotting import save_figure
from mmalign.report import sweep_summary
from mmalign.retrieval import RetrievalOptions, build_protocol, score_protocol
from tests.test_retrieval import embeddings

LABEL = {"dataset": "toy", "encoder": "enc"}
ROPTS = RetrievalOptions(ks=(1, 5), metrics=("cosine",), subset_size=30, bootstrap=50, seed=3)


def gapped(noise: float = 0.8) -> Embeddings:
    """Noisy pairs with the texts displaced by a constant offset (a modality gap)."""
    emb = embeddings(60, captions=2, d=8, noise=noise)
    offset = np.linspace(1.0, 2.0, 8, dtype=np.float32)
    return Embeddings(emb.image, emb.text + offset, emb.images, emb.texts, {})


def test_lambda_zero_reproduces_the_retrieval_numbers_exactly() -> None:
    emb = gapped()
    frame = sweep(emb, GapShiftOptions(lambdas=(0.0, 1.0)), ROPTS, LABEL)
    reference = score_protocol(emb, "subset", ROPTS, "toy", "enc")
    reference = reference[reference["measure"] == "hit"].set_index(["direction", "k"])
    original = frame[(frame["lambda"] == 0.0) & (frame["measure"] == "hit")]
    assert len(original) == 4
    for row in original.itertuples():
        expected = reference.loc[(row.direction, row.k)]
        assert (row.value, row.ci_low, row.ci_high) == (
            expected["value"],
            expected["ci_low"],
            expected["ci_high"],
        )


@pytest.mark.parametrize("lam", [-1.0, 0.25, 0.5, 1.0, 1.5, 2.0])
def test_the_gap_after_a_shift_is_one_minus_lambda_times_the_original(lam: float) -> None:
    rng = np.random.default_rng(0)
    text = rng.normal(size=(50, 6)).astype(np.float32)
    image = (rng.normal(size=(50, 6)) + 3.0).astype(np.float32)
    gap = float(np.linalg.norm(image.mean(0) - text.mean(0)))
    t, i = shift(text, image, centroid_delta(text, image), lam)
    assert np.linalg.norm(i.mean(0) - t.mean(0)) == pytest.approx(
        abs(1 - lam) * gap, rel=1e-5, abs=1e-5 * gap
    )
    # Within a modality nothing moves.
    np.testing.assert_allclose(t - t[0], text - text[0], atol=1e-5)
    np.testing.assert_allclose(i - i[0], image - image[0], atol=1e-5)


def test_sweep_rows_gaps_and_cosines() -> None:
    emb = gapped()
    lambdas = (-0.5, 0.0, 0.5, 1.0)
    frame = sweep(emb, GapShiftOptions(lambdas=lambdas), ROPTS, LABEL)
    gaps = frame.groupby("lambda")["gap"].first()
    expected = np.abs(1 - np.array(lambdas)) * gaps[0.0]
    np.testing.assert_allclose(gaps.to_numpy(), expected, rtol=1e-5, atol=1e-5 * gaps[0.0])
    cosines = frame[frame["direction"] == "pairs"].pivot_table(
        index="lambda", columns="measure", values="value"
    )
    # The protocol's pairs at lambda 0, checked against NumPy.
    protocol = build_protocol(emb, "subset", ROPTS)
    t, i = emb.text[protocol.text_rows], emb.image[protocol.image_rows]
    assert (emb.texts["caption_idx"].to_numpy()[protocol.text_rows] == 0).all()
    direct = np.sum(t * i, 1) / np.linalg.norm(t, axis=1) / np.linalg.norm(i, axis=1)
    assert cosines.loc[0.0, "matching_cosine"] == pytest.approx(direct.mean(), rel=1e-5)
    # Closing the gap raises every cross-modal cosine here: all points share the offset.
    assert cosines.loc[1.0, "non_matching_cosine"] > cosines.loc[0.0, "non_matching_cosine"]
    summary = sweep_summary(frame)
    assert set(summary) == {"t2i", "i2t"}
    assert (
        summary["t2i"]["hit_at_1_original"]
        == frame.query("`lambda` == 0 and direction == 't2i' and k == 1")["value"].item()
    )


def test_mismatched_dimensions_are_na_rows_with_a_note_and_the_aligned_space_is_swept() -> None:
    emb = gapped()
    wide = Embeddings(np.hstack([emb.image, emb.image]), emb.text, emb.images, emb.texts, {})
    rows = np.arange(20)  # 8-d pairs standing in for the heads' space
    aligned = PairSplit(emb.text[:20], emb.image[:20] + 1.0, rows, rows)
    frame = sweep(wide, GapShiftOptions(lambdas=(0.0, 1.0)), ROPTS, LABEL, aligned)
    raw, heads = frame[frame["space"] == "raw"], frame[frame["space"] == "test_align"]
    assert raw["value"].isna().all() and (raw["note"].str.contains("16-d")).all()
    assert sweep_summary(raw) == {}
    assert heads["value"].notna().all() and (heads.query("measure == 'hit'")["k"] > 0).all()
    gaps = heads.groupby("lambda")["gap"].first()
    expected = np.linalg.norm(aligned.image.mean(0) - aligned.text.mean(0))
    assert gaps[0.0] == pytest.approx(expected, rel=1e-5) and gaps[1.0] < 1e-5
    with pytest.raises(ValueError, match="one space"):
        sweep_summary(frame)


def test_normalized_sweep_keeps_lambda_zero_ranks() -> None:
    emb = gapped()
    raw = sweep(emb, GapShiftOptions(lambdas=(0.0,)), ROPTS, LABEL)
    unit = sweep(emb, GapShiftOptions(lambdas=(0.0,), normalize=True), ROPTS, LABEL)
    hits = ["direction", "k", "value"]
    pd.testing.assert_frame_equal(
        raw.loc[raw["measure"] == "hit", hits], unit.loc[unit["measure"] == "hit", hits]
    )


def test_the_figure_draws_each_space_and_states_an_na_one(tmp_path: Path) -> None:
    emb = gapped()
    wide = Embeddings(np.hstack([emb.image, emb.image]), emb.text, emb.images, emb.texts, {})
    rows = np.arange(20)
    aligned = PairSplit(emb.text[:20], emb.image[:20] + 1.0, rows, rows)
    frame = sweep(wide, GapShiftOptions(lambdas=(0.0, 0.5, 1.0)), ROPTS, LABEL, aligned)
    fig = gap_shift_figure(frame, "toy / enc")
    raw, heads = fig.axes[:3], fig.axes[3:6]
    assert raw[0].get_title(loc="left") == SPACE_NAMES["raw"]
    assert not raw[0].get_lines() and "16-d" in raw[0].texts[0].get_text()  # n/a, with the note
    labels = [str(line.get_label()) for line in heads[0].get_lines()]
    labels = [label for label in labels if not label.startswith("_")]  # the lambda = 0 rule
    assert labels == [f"{name} hit@{k}" for name in DIRECTION_NAMES.values() for k in (1, 5)]
    assert all(p.stat().st_size > 1000 for p in save_figure(fig, tmp_path / "gap_shift"))
