"""Why the paper's MLP fails: a controlled ablation (beyond the paper; its conclusion 4).

The paper concludes that an MLP cannot learn the image-text similarity. Its
recipe combines several choices any of which could be the cause; this
experiment trains the same MLP (a fixed architecture, ``hidden``, so only the
named factor changes) on the same splits, from the same initial weights, with
the same batches and negatives, changing one factor at a time from the
paper's recipe:

- ``paper``: the contrastive loss (Eq. 1, 3-4), Adam at ``lr`` times the
  per-epoch factor 1 / (1 + 2^(0.5 c)), the paper's early stopping (< 1%
  better than the previous epoch for 5 epochs), at most ``paper_epochs``,
  ``negatives[0]`` negatives per positive, one MLP per direction (t2i: text
  anchors with sampled images; i2t: image anchors with sampled texts);
- ``no_schedule``: the base rate in every epoch (the factor halves the rate in
  the first epoch and makes it ~0.1% of it by epoch 20: the schedule's whole
  sum is about 2.3 epochs at the base rate);
- ``negatives_<n>``: n negatives per positive for each further value of
  ``negatives``;
- ``converge``: training to convergence, at most ``converge_epochs`` with a
  patient rule: stop once ``converge_patience`` consecutive epochs are not
  better than the best validation loss so far by more than
  ``converge_min_delta`` of it (``EarlyStopping`` with ``against="best"``), so
  a loss that zigzags while it creeps up does not keep training alive, as the
  paper's previous-epoch rule would, and neither do gains of 1e-6 on a
  plateau (on the default data 0.1% stops 8-14 epochs before the 40-epoch
  cap where a run reached it, its best loss within 0.3% of the capped run's);
- ``no_schedule_converge``: both of the above;
- ``balanced``: the positive and the negatives weighted 1/2 each instead of
  Eq. 3-4's 1/N and (N - 1)/N: with the paper's averaging a model that
  scores *every* pair -1 is already within 2/N of the optimum, so the
  gradient to tell the positive apart is N times weaker than the one to push
  everything down; ``balanced_converge``: the same with a constant rate,
  trained to convergence;
- ``mse``: the MSE target (the pair's cosine) instead of the contrastive
  loss (n/a when the two dimensions differ: the target does not exist).

Every variant, ``mse`` included, is trained per direction as the paper does (a
text-anchored MLP ranks images for text queries, an image-anchored one texts
for image queries; see :func:`recipes`), so in each direction a variant
differs from ``paper`` in its named factor only. (The learned variant
``mlp_mse`` trains one text-anchored MLP for both directions; here that would
change two factors for i2t, the loss and the anchor.) Each is scored on the
test split by the retrieval engine, metric ``mlp_ablation:<variant>``. Only
the validation loss selects anything (the best epoch); the test split is only
scored.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from mmalign import seeding
from mmalign.config import schema_defaults
from mmalign.layout import DIRECTIONS
from mmalign.learn.common import (
    PairSplits,
    TrainHistory,
    dimension_note,
    na_rows,
    result_frame,
)
from mmalign.learn.mlp import (
    MLPOptions,
    SimilarityMLP,
    lr_factor,
    score_mlps,
    train_mlps_stopped_alike,
    training_key,
)
from mmalign.retrieval import QueryRanks, RetrievalOptions, ranks_table, write_ranks

log = logging.getLogger(__name__)

CURVE_COLUMNS = ["variant", "direction", "epoch", "train_loss", "val_loss", "lr", "best"]


_DEFAULTS = schema_defaults("learn.ablation")


@dataclass(frozen=True)
class AblationOptions:
    """The ``learn.ablation`` config (see the schema: the defaults are its; ``enabled``
    is read by the workflow, not here)."""

    hidden: tuple[int, ...] = tuple(_DEFAULTS["hidden"])
    paper_epochs: int = _DEFAULTS["paper_epochs"]
    converge_epochs: int = _DEFAULTS["converge_epochs"]
    converge_patience: int = _DEFAULTS["converge_patience"]
    converge_min_delta: float = _DEFAULTS["converge_min_delta"]
    negatives: tuple[int, ...] = tuple(_DEFAULTS["negatives"])

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> AblationOptions:
        return cls(
            hidden=tuple(cfg["hidden"]),
            paper_epochs=cfg["paper_epochs"],
            converge_epochs=cfg["converge_epochs"],
            converge_patience=cfg["converge_patience"],
            converge_min_delta=cfg["converge_min_delta"],
            negatives=tuple(cfg["negatives"]),
        )


@dataclass(frozen=True)
class Variant:
    name: str
    changes: str  # what differs from the paper's recipe, for people
    loss: str
    opts: MLPOptions


def variants(base: MLPOptions, opts: AblationOptions) -> list[Variant]:
    """The paper's recipe and its one-factor changes (see the module docstring)."""
    paper = dataclasses.replace(
        base,
        max_epochs=opts.paper_epochs,
        negatives=opts.negatives[0],
        lr_schedule=True,
        balanced=False,
        patience=5,
        min_delta=0.01,
    )
    converge = {"max_epochs": opts.converge_epochs, "patience": opts.converge_patience,
                "min_delta": opts.converge_min_delta, "stop_against": "best"}  # fmt: skip
    out = [
        Variant("paper", "the paper's recipe", "contrastive", paper),
        Variant("no_schedule", "constant learning rate", "contrastive",
                dataclasses.replace(paper, lr_schedule=False)),
        *[
            Variant(f"negatives_{n}", f"{n} negatives per positive", "contrastive",
                    dataclasses.replace(paper, negatives=n))
            for n in opts.negatives[1:]
        ],
        Variant("converge", "trained to convergence", "contrastive",
                dataclasses.replace(paper, **converge)),
        Variant("no_schedule_converge", "constant learning rate, trained to convergence",
                "contrastive", dataclasses.replace(paper, lr_schedule=False, **converge)),
        Variant("balanced", "positive and negatives weighted 1/2 each, not 1/N and (N-1)/N",
                "contrastive", dataclasses.replace(paper, balanced=True)),
        Variant("balanced_converge", "balanced weighting, constant learning rate, trained "
                "to convergence", "contrastive",
                dataclasses.replace(paper, balanced=True, lr_schedule=False, **converge)),
        Variant("mse", "MSE to the cosine instead of the contrastive loss", "mse", paper),
    ]  # fmt: skip
    return out


@dataclass(frozen=True)
class Recipe:
    """How a variant trains the MLP of one direction: the loss, the anchored side
    (``"t2i"``: text anchors with sampled images; ``"i2t"``: image anchors with
    sampled texts) and the options."""

    loss: str
    anchor: str
    opts: MLPOptions


def recipes(variant: Variant) -> dict[str, Recipe]:
    """Each direction's training recipe: one MLP per direction, anchored on its
    query side, for every variant (the paper's per-direction training), so a
    variant's recipe differs from ``paper``'s in its named factor only."""
    return {direction: Recipe(variant.loss, direction, variant.opts) for direction in DIRECTIONS}


def train_variants(
    splits: PairSplits,
    variants: list[Variant],
    opts: AblationOptions,
    seed: int,
    val_seed: int,
    device: torch.device,
) -> dict[str, dict[str, tuple[SimilarityMLP, TrainHistory]]]:
    """Each variant's MLP and history per direction (variants that cannot train,
    the MSE loss on unequal dimensions, left out).

    Every variant trains from the same seeds (the same weights, batches and
    negatives), so variants whose recipes differ only in when they stop
    (``paper`` and ``converge``; ``no_schedule`` and ``no_schedule_converge``)
    follow one trajectory: it is trained once, each variant's stopping rule
    following it (:func:`mmalign.learn.mlp.train_mlps_stopped_alike`), with
    exactly the result of training each alone."""
    groups: dict[tuple[str, MLPOptions], list[Variant]] = {}
    for variant in variants:
        if variant.loss == "mse" and dimension_note(splits):
            continue
        groups.setdefault((variant.loss, training_key(variant.opts)), []).append(variant)
    trained: dict[str, dict[str, tuple[SimilarityMLP, TrainHistory]]] = {}
    for (loss, _), group in groups.items():
        if len(group) > 1:
            log.info(
                "%s: one training run, stopped as each of them stops",
                ", ".join(v.name for v in group),
            )
        for k, (direction, recipe) in enumerate(recipes(group[0]).items()):
            results = train_mlps_stopped_alike(
                splits, list(opts.hidden), loss, recipe.anchor,
                [recipes(v)[direction].opts for v in group],
                seeding.int_seed(seed, 11, k), val_seed, device,
            )  # fmt: skip
            for variant, result in zip(group, results, strict=True):
                trained.setdefault(variant.name, {})[direction] = result
    return trained


def run_ablation(
    splits: PairSplits,
    base: MLPOptions,
    opts: AblationOptions,
    ropts: RetrievalOptions,
    seed: int,
    device: torch.device,
    label: dict[str, str],
    sink: list[QueryRanks] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and score every variant: (retrieval rows, per-epoch curves with
    ``variant, direction, epoch, train_loss, val_loss, lr``); the per-query
    outcomes go to ``sink``."""
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    val_seed = seeding.int_seed(seed, 7)
    trained = train_variants(splits, variants(base, opts), opts, seed, val_seed, device)
    for variant in variants(base, opts):
        metric = f"mlp_ablation:{variant.name}"
        if variant.name not in trained:
            note = dimension_note(splits)
            log.warning("%s: %s", variant.name, note)
            rows += na_rows(metric, len(splits.test), note, label, ropts)
            continue
        models: dict[str, SimilarityMLP] = {}
        for direction, (models[direction], history) in trained[variant.name].items():
            for epoch, (train, val) in enumerate(
                zip(history.train_losses, history.val_losses, strict=True)
            ):
                factor = lr_factor(variant.opts)(epoch)
                curves.append({"variant": variant.name, "direction": direction,
                               "epoch": epoch + 1, "train_loss": train, "val_loss": val,
                               "lr": variant.opts.lr * factor,
                               "best": epoch == history.best_epoch})  # fmt: skip

        scored, summary = score_mlps(models, splits.test, metric, label, ropts, device, sink)
        rows += scored
        log.info("%s (%s): test hit@1 t2i %.4f, i2t %.4f", variant.name, variant.changes,
                 summary["t2i"]["hit_at_1"],
                 summary["i2t"]["hit_at_1"])  # fmt: skip
    return result_frame(rows), pd.DataFrame(curves, columns=CURVE_COLUMNS)


def ablation_job(
    embeddings_dir: str | Path,
    learn_cfg: dict[str, Any],
    retrieval_cfg: dict[str, Any],
    seed: int,
    threads: int,
    out_rows: str | Path,
    out_curves: str | Path,
    out_ranks: str | Path,
    label: dict[str, str],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``mlp_ablation`` rule: the variants' test rows, their per-query ranks
    and their loss curves."""
    from mmalign.devices import torch_device
    from mmalign.embed import Embeddings
    from mmalign.io import write_parquet
    from mmalign.learn.common import SplitTooSmall, pair_splits

    torch.set_num_threads(max(1, threads))
    ropts = RetrievalOptions.from_config(retrieval_cfg, seed)
    opts = AblationOptions.from_config(learn_cfg["ablation"])
    emb = Embeddings.load(embeddings_dir)
    ranked: list[QueryRanks] = []
    try:
        splits = pair_splits(emb, learn_cfg["max_pairs"], seed, where=str(embeddings_dir))
    except SplitTooSmall as err:
        log.warning("%s", err)
        names = [f"mlp_ablation:{v.name}" for v in variants(MLPOptions(), opts)]
        rows = result_frame([r for m in names for r in na_rows(m, 0, f"n/a: {err}", label, ropts)])
        curves = pd.DataFrame(columns=CURVE_COLUMNS)
    else:
        base = MLPOptions.from_config(learn_cfg["mlp"])
        device = torch_device(learn_cfg["device"], "learn.device")
        rows, curves = run_ablation(splits, base, opts, ropts, seed, device, label, ranked)
    write_parquet(rows, out_rows)
    write_parquet(curves, out_curves)
    write_ranks(ranks_table(ranked, emb.texts, emb.images), out_ranks)
    return rows, curves
