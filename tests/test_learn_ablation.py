"""The MLP ablation: controlled variants that differ from the paper's recipe in
one named factor, deterministic, and scored like every learned variant."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import mmalign.learn.ablation as ablation
import mmalign.learn.mlp as mlp
from mmalign.learn.ablation import AblationOptions, recipes, run_ablation, variants
from mmalign.learn.common import TrainHistory
from mmalign.learn.figures import mlp_ablation_figure
from mmalign.learn.mlp import MLPOptions, SimilarityMLP, contrastive_loss, train_mlp
from mmalign.plotting import save_figure
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

    converge = {"max_epochs", "patience", "min_delta", "stop_against"}
    assert changed("no_schedule") == {"lr_schedule"}
    assert changed("negatives_3") == {"negatives"}
    assert changed("converge") == converge
    assert changed("no_schedule_converge") == converge | {"lr_schedule"}
    assert changed("balanced") == {"balanced"}
    assert changed("balanced_converge") == converge | {"lr_schedule", "balanced"}
    assert changed("mse") == set() and found["mse"].loss == "mse"
    assert found["converge"].opts.stop_against == "best" and paper.stop_against == "previous"


def recipe_factors(variant_name: str, direction: str) -> dict[str, object]:
    """Everything one direction's MLP of a variant is trained with: loss, anchor, options."""
    recipe = recipes({v.name: v for v in variants(BASE, OPTS)}[variant_name])[direction]
    return {"loss": recipe.loss, "anchor": recipe.anchor, **dataclasses.asdict(recipe.opts)}


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_mse_differs_from_paper_in_the_loss_only_in_each_direction(direction: str) -> None:
    paper, mse = recipe_factors("paper", direction), recipe_factors("mse", direction)
    assert {k for k in paper if paper[k] != mse[k]} == {"loss"}
    # Each direction's MLP is anchored on its query side, as the paper trains it.
    assert paper["anchor"] == mse["anchor"] == direction


def test_the_run_trains_what_the_recipes_say(monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded trainings: per direction, ``mse`` differs from ``paper`` in the loss
    only (same anchor, options and seed); every variant's MLPs are trained."""
    calls: list[tuple[object, ...]] = []

    def recording(*args: Any) -> list[tuple[SimilarityMLP, TrainHistory]]:
        splits, hidden, loss, anchor, options, seed, val_seed, _ = args
        calls.extend((loss, anchor, opts, seed, val_seed, tuple(hidden)) for opts in options)
        # Untrained and one fake epoch: only what the run asks for is under test.
        model = SimilarityMLP(splits.dim_text, splits.dim_image, hidden)
        return [(model.eval(), TrainHistory([1.0], [1.0], best_epoch=0)) for _ in options]

    monkeypatch.setattr(ablation, "train_mlps_stopped_alike", recording)
    one = dataclasses.replace(OPTS, negatives=(1,))  # paper, no_schedule, converge... mse
    rows, curves = run_ablation(tiny(), BASE, one, ROPTS, 0, CPU, LABEL)
    found = variants(BASE, one)
    assert len(calls) == 2 * len(found)  # two MLPs for every variant, mse too
    for variant in found:
        for direction, recipe in recipes(variant).items():
            assert (recipe.loss, direction, recipe.opts) in [c[:3] for c in calls], variant.name
    paper = {v.name: v for v in found}["paper"].opts
    mse = [c[1:] for c in calls if c[0] == "mse"]
    assert [c[0] for c in mse] == ["t2i", "i2t"]
    assert mse == [c[1:] for c in calls if c[0] == "contrastive" and c[2] == paper]
    assert set(curves.loc[curves["variant"] == "mse", "direction"]) == {"t2i", "i2t"}
    assert rows.loc[rows["metric"] == "mlp_ablation:mse", "value"].notna().all()


def test_variants_that_differ_in_stopping_only_train_once_as_if_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """paper and converge (and no_schedule and no_schedule_converge) follow one
    training run, each stopped by its own rule: the MLPs and histories are
    those of training each alone, bit for bit, and the epochs are run once."""
    found = {v.name: v for v in variants(BASE, dataclasses.replace(OPTS, converge_epochs=5))}
    epochs = {"n": 0}
    real_fit_shared = mlp.fit_shared

    def counting(model, rules, epoch, label):
        def counted():
            epochs["n"] += 1
            return epoch()

        return real_fit_shared(model, rules, counted, label)

    monkeypatch.setattr(mlp, "fit_shared", counting)
    for pair in (("paper", "converge"), ("no_schedule", "no_schedule_converge")):
        options = [found[name].opts for name in pair]
        epochs["n"] = 0
        together = mlp.train_mlps_stopped_alike(
            tiny(), [8], "contrastive", "i2t", options, 3, 4, CPU
        )
        shared_epochs, epochs["n"] = epochs["n"], 0
        alone = [train_mlp(tiny(), [8], "contrastive", "i2t", o, 3, 4, CPU) for o in options]
        assert (
            shared_epochs
            == max(h.epochs_run for _, h in alone)
            < sum(h.epochs_run for _, h in alone)
        )
        for (model, history), (model_alone, history_alone) in zip(together, alone, strict=True):
            assert history.val_losses == history_alone.val_losses
            assert history.train_losses == history_alone.train_losses
            assert history.best_epoch == history_alone.best_epoch
            assert history.stopped_early == history_alone.stopped_early
            for key, value in model.state_dict().items():
                assert torch.equal(value, model_alone.state_dict()[key]), key
    with pytest.raises(ValueError, match="train differently"):
        mlp.train_mlps_stopped_alike(
            tiny(), [8], "contrastive", "t2i", [found["paper"].opts, found["no_schedule"].opts],
            0, 1, CPU,
        )  # fmt: skip


def test_converge_stops_on_no_better_than_the_best(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-made validation-loss sequence through train_mlp with the `converge`
    options (patience 3, min_delta 0): the best is 0.79 at epoch 4; epochs 5-7
    (0.85, 0.80, 0.82) are no better than it, so training stops after epoch 7
    and keeps epoch 4. The paper's previous-epoch rule would run on: 0.80 and
    0.81 each beat the epoch before them."""
    losses = [1.0, 0.8, 0.9, 0.79, 0.85, 0.80, 0.82, 0.81, 0.78, 0.77]
    seen = iter(losses)
    monkeypatch.setattr(mlp, "validation_loss", lambda *args, **kw: next(seen))
    opts = dataclasses.replace(OPTS, converge_epochs=len(losses), converge_patience=3,
                               converge_min_delta=0.0)  # fmt: skip
    converge = {v.name: v for v in variants(BASE, opts)}["converge"].opts
    _, history = train_mlp(tiny(), [8], "contrastive", "t2i", converge, 0, 1, CPU)
    assert history.val_losses == losses[:7] and history.best_epoch == 3
    assert history.stopped_early
    # The same sequence under the paper's rule with the same patience and min_delta.
    seen = iter(losses)
    previous = dataclasses.replace(converge, stop_against="previous")
    _, history = train_mlp(tiny(), [8], "contrastive", "t2i", previous, 0, 1, CPU)
    assert history.val_losses == losses and history.best_epoch == 9


def test_converge_ignores_gains_below_min_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a plateau that creeps down by 0.02% an epoch, `converge` with min_delta
    0.1% stops after the patience (the last gain that counts is epoch 2's; 0.4997,
    3 epochs on, is only 0.06% below it) and keeps the lowest loss it saw; with
    min_delta 0 every epoch counts and it trains to the cap."""
    losses = [1.0, 0.5, 0.4999, 0.4998, 0.4997, 0.4996, 0.4995, 0.4994]
    for min_delta, ran, best in ((1e-3, 5, 4), (0.0, 8, 7)):
        seen = iter(losses)
        monkeypatch.setattr(mlp, "validation_loss", lambda *args, seen=seen, **kw: next(seen))
        opts = dataclasses.replace(OPTS, converge_epochs=len(losses), converge_patience=3,
                                   converge_min_delta=min_delta)  # fmt: skip
        converge = {v.name: v for v in variants(BASE, opts)}["converge"].opts
        _, history = train_mlp(tiny(), [8], "contrastive", "t2i", converge, 0, 1, CPU)
        assert history.val_losses == losses[:ran] and history.best_epoch == best


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
