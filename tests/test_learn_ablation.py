"""The MLP ablation: controlled variants that differ from the paper's recipe in
one named factor, deterministic, and scored like every learned variant."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mmalign.learn.mlp as mlp
from mmalign.learn.ablation import AblationOptions, run_ablation, variants
from mmalign.learn.mlp import MLPOptions, contrastive_loss
from mmalign.plots import mlp_ablation_figure, save_figure
from mmalign.retrieval import RetrievalOptions

from .test_learn import CPU, LABEL, linear_relation

ROPTS = RetrievalOptions(ks=(1, 5), bootstrap=20)
OPTS = AblationOptions(hidden=(8,), paper_epochs=2, converge_epochs=3, converge_patience=2,
                       negatives=(1, 3))  # fmt: skip
BASE = MLPOptions(batch_size=16)


def tiny(dt: int = 6, di: int = 6):
    return linear_relation((40, 12, 12), dt=dt, di=di)


def test_each_variant_changes_only_what_it_names() -> None:
    found = {v.name: v for v in variants(BASE, OPTS)}
    names = ["paper", "no_schedule", "negatives_3", "converge", "no_schedule_converge",
             "balanced", "balanced_converge", "mse"]  # fmt: skip
    assert list(found) == names
    paper = found["paper"].opts
    assert (paper.lr_schedule, paper.balanced, paper.negatives) == (True, False, 1)
    assert (paper.max_epochs, paper.patience, paper.min_delta) == (2, 5, 0.01)

    def changed(name: str) -> set[str]:
        a, b = dataclasses.asdict(paper), dataclasses.asdict(found[name].opts)
        return {k for k in a if a[k] != b[k]}

    converge = {"max_epochs", "patience", "min_delta"}
    assert changed("no_schedule") == {"lr_schedule"}
    assert changed("negatives_3") == {"negatives"}
    assert changed("converge") == converge
    assert changed("no_schedule_converge") == converge | {"lr_schedule"}
    assert changed("balanced") == {"balanced"}
    assert changed("balanced_converge") == converge | {"lr_schedule", "balanced"}
    assert changed("mse") == set() and found["mse"].loss == "mse"


def test_balanced_weighting_by_hand() -> None:
    d = torch.tensor([[0.5, -0.5, 0.0]])  # the positive, then two negatives
    pos, neg = 0.5 * (1 - 0.5) ** 2, np.mean([0.5 * (-0.5 + 1) ** 2, 0.5 * (0 + 1) ** 2])
    assert float(contrastive_loss(d, 2)) == pytest.approx(0.5 * pos + 0.5 * neg)
    assert float(contrastive_loss(d, 40)) == pytest.approx(pos / 40 + 39 / 40 * neg)


def test_the_ablation_is_deterministic_and_scored() -> None:
    rows, curves = run_ablation(tiny(), BASE, OPTS, ROPTS, 0, CPU, LABEL)
    again_rows, again_curves = run_ablation(tiny(), BASE, OPTS, ROPTS, 0, CPU, LABEL)
    pd.testing.assert_frame_equal(rows, again_rows)
    pd.testing.assert_frame_equal(curves, again_curves)
    assert set(rows["protocol"]) == {"learned_test"} and rows["value"].notna().all()
    assert set(rows["metric"]) == {f"mlp_ablation:{v.name}" for v in variants(BASE, OPTS)}
    paper = curves[(curves["variant"] == "paper") & (curves["direction"] == "t2i")]
    flat = curves[(curves["variant"] == "no_schedule") & (curves["direction"] == "t2i")]
    np.testing.assert_allclose(paper["lr"], 5e-5 / (1 + 2 ** (0.5 * np.arange(len(paper)))))
    assert (flat["lr"] == 5e-5).all()
    assert curves.groupby(["variant", "direction"])["best"].sum().eq(1).all()


def test_without_the_schedule_only_the_learning_rate_differs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the paper's factor forced to 1, `paper` and `no_schedule` are the same
    run: same initial weights, batches and negatives."""
    monkeypatch.setattr(mlp, "paper_lr_factor", lambda epoch: 1.0)
    rows, curves = run_ablation(tiny(), BASE, OPTS, ROPTS, 0, CPU, LABEL)
    by = {name: group.drop(columns="metric").reset_index(drop=True)
          for name, group in rows.groupby("metric")}  # fmt: skip
    pd.testing.assert_frame_equal(by["mlp_ablation:paper"], by["mlp_ablation:no_schedule"])
    losses = curves.set_index(["variant", "direction", "epoch"])["val_loss"]
    pd.testing.assert_series_equal(losses["paper"], losses["no_schedule"], check_names=False)


def test_mse_on_different_dimensions_is_na_and_the_figure_draws(tmp_path: Path) -> None:
    rows, curves = run_ablation(tiny(dt=5, di=7), BASE, OPTS, ROPTS, 0, CPU, LABEL)
    mse = rows[rows["metric"] == "mlp_ablation:mse"]
    assert mse["value"].isna().all() and mse["note"].str.contains("5-d").all()
    assert rows.loc[rows["metric"] != "mlp_ablation:mse", "value"].notna().all()
    fig = mlp_ablation_figure(curves, rows, "toy")
    assert len(fig.axes) == 2
    assert all(p.stat().st_size > 0 for p in save_figure(fig, tmp_path / "mlp_ablation"))
