"""What every learned variant shares: the data splits, the paper's training
schedule, early stopping, and scoring a learned ranking into result rows.

Data (paper Section 4.5): one pair per image, its *first* caption
(:func:`mmalign.retrieval.first_caption_pairs`), split by the manifest's
``split`` column (the seeded 80/10/10 split made when the manifest was
prepared), optionally a seeded subset of ``max_pairs`` pairs first (the
paper's 20K-pair subsets of Flickr30K and MS-COCO). Pair ``i`` of a split is
text ``i`` with image ``i``, so ``I_ij = [i == j]`` (Eq. 2).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from mmalign import seeding
from mmalign.embed import Embeddings
from mmalign.io import atomic_path
from mmalign.layout import DIRECTIONS, LEARNED_PROTOCOL, SPLITS
from mmalign.retrieval import (
    RESULT_COLUMNS,
    QueryRanks,
    RetrievalOptions,
    Task,
    bootstrap,
    first_caption_pairs,
    measure_names,
    measures_per_query,
    relevant_ranks,
    rows_for,
)

log = logging.getLogger(__name__)


class LearnError(ValueError):
    """Input a learned variant cannot use; the message names what and why."""


class SplitTooSmall(LearnError):
    """A split with fewer than 2 pairs: the variant reports n/a instead of numbers."""


@dataclass(frozen=True)
class PairSplit:
    """Paired rows of one split: ``text[i]`` (n x d_text) matches ``image[i]`` (n x d_image)."""

    text: np.ndarray
    image: np.ndarray
    text_rows: np.ndarray  # rows of text.npy
    image_rows: np.ndarray  # rows of image.npy

    def __len__(self) -> int:
        return len(self.text)


@dataclass(frozen=True)
class PairSplits:
    train: PairSplit
    val: PairSplit
    test: PairSplit

    @property
    def dim_text(self) -> int:
        return int(self.train.text.shape[1])

    @property
    def dim_image(self) -> int:
        return int(self.train.image.shape[1])

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLITS}


def pair_splits(
    emb: Embeddings, max_pairs: int | None, seed: int, where: str = "embeddings"
) -> PairSplits:
    """First-caption pairs, a seeded subset of ``max_pairs`` (None = all), split
    by the manifest's ``split`` column (``splits.source``: the paper's random
    80/10/10 by default), never by ``eval_split``, which only says which images
    the multicaption protocol scores (e.g. Karpathy's 1K test split). Raises
    :class:`LearnError` naming ``where`` when a split has fewer than 2 pairs."""
    text_rows, image_rows = first_caption_pairs(emb)
    if max_pairs is not None and max_pairs < len(text_rows):
        pick = np.sort(seeding.rng(seed).choice(len(text_rows), max_pairs, replace=False))
        text_rows, image_rows = text_rows[pick], image_rows[pick]
    split = emb.texts["split"].to_numpy()[text_rows]
    unknown = sorted(set(split) - set(SPLITS))
    if unknown:
        raise LearnError(f"{where}: texts.parquet has unknown split values {unknown}")
    parts = {}
    for name in SPLITS:
        keep = split == name
        if keep.sum() < 2:
            raise SplitTooSmall(
                f"{where}: the {name!r} split has {int(keep.sum())} pair(s); learned "
                "similarities need at least 2 pairs in each of train, val and test "
                "(raise max_pairs or the dataset's split fractions)"
            )
        t, i = text_rows[keep], image_rows[keep]
        parts[name] = PairSplit(
            np.asarray(emb.text[t], dtype=np.float32),
            np.asarray(emb.image[i], dtype=np.float32),
            t,
            i,
        )
    return PairSplits(**parts)


# ---- the paper's schedule and early stopping (Section 3, last paragraph) ----


def fused_on(device: torch.device) -> bool | None:
    """``fused=`` for torch's Adam/AdamW: one kernel per step where torch has one
    (CPU, CUDA), instead of ~10 elementwise passes per parameter (the MLP steps
    run 7% faster on the CPU); ``None`` elsewhere (torch's default)."""
    return True if device.type in ("cpu", "cuda") else None


def paper_lr_factor(epoch: int) -> float:
    """The learning-rate multiplier of epoch ``c`` (0-based): 1 / (1 + 2^(0.5 c)).

    0-based as Keras' ``LearningRateScheduler`` counts epochs, so the first
    epoch runs at half the base rate (5e-5 -> 2.5e-5), the 11th at 1/33.
    """
    return 1.0 / (1.0 + 2.0 ** (0.5 * epoch))


class EarlyStopping:
    """The paper's rule (``against="previous"``): stop when the validation loss
    has not improved by more than ``min_delta`` (relative, 0.01 = 1%) over the
    *previous epoch's* loss for ``patience`` consecutive epochs. Independently,
    the epoch with the lowest loss so far is the best one (its weights are kept).

    An epoch "improves" when ``loss < ref - min_delta * |ref|``, ``ref`` being
    the previous epoch's loss; the first epoch counts as an improvement.
    ``against="best"`` compares with the best loss so far instead (Keras'
    usual rule, used by the alignment heads: a loss that zigzags while rising
    does not reset the count).
    """

    def __init__(self, patience: int, min_delta: float, against: str = "previous") -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        if against not in ("previous", "best"):
            raise ValueError(f"against must be 'previous' or 'best', got {against!r}")
        self.patience, self.min_delta, self.against = patience, min_delta, against
        self.previous: float | None = None
        self.stale = 0
        self.best = math.inf
        self.best_epoch = -1
        self.epoch = -1

    def step(self, loss: float) -> bool:
        """Record one epoch's validation loss; True when training should stop."""
        if not math.isfinite(loss):
            raise LearnError(
                f"validation loss is {loss} at epoch {self.epoch + 2}; training diverged"
            )
        self.epoch += 1
        ref = self.previous if self.against == "previous" else self.best
        improved = ref is None or not math.isfinite(ref) or loss < ref - self.min_delta * abs(ref)
        if loss < self.best:
            self.best, self.best_epoch = loss, self.epoch
        self.stale = 0 if improved else self.stale + 1
        self.previous = loss
        return self.stale >= self.patience

    @property
    def is_best(self) -> bool:
        """Whether the last recorded epoch is the best so far."""
        return self.best_epoch == self.epoch


@dataclass
class TrainHistory:
    """What one training run did: per-epoch losses (1 entry per epoch run)."""

    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    best_epoch: int = -1  # 0-based
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.val_losses)

    @property
    def best_val_loss(self) -> float:
        return self.val_losses[self.best_epoch] if self.val_losses else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "best_epoch": self.best_epoch + 1,  # 1-based for people
            "best_val_loss": self.best_val_loss,
            "seconds": round(self.seconds, 3),
        }


def write_safetensors(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | Path
) -> None:
    """Write weights atomically (through bytes, so the file gets the usual mode)."""
    from safetensors.torch import save

    with atomic_path(path) as tmp:
        tmp.write_bytes(save(tensors, metadata=metadata))


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit(
    model: torch.nn.Module,
    max_epochs: int,
    stopper: EarlyStopping,
    epoch: Callable[[], tuple[float, float]],
    label: str,
) -> TrainHistory:
    """Run ``epoch()`` (one pass over the training data, returning the train
    and validation losses) until ``stopper`` says stop or ``max_epochs``; load
    the best epoch's weights back into ``model`` and leave it in eval mode."""
    ((best, history),) = fit_shared(model, [(stopper, max_epochs)], epoch, label)
    model.load_state_dict(best)
    model.eval()
    return history


def fit_shared(
    model: torch.nn.Module,
    rules: Sequence[tuple[EarlyStopping, int]],
    epoch: Callable[[], tuple[float, float]],
    label: str,
) -> list[tuple[dict[str, torch.Tensor], TrainHistory]]:
    """One training run followed by several stopping rules, each an
    (``EarlyStopping``, ``max_epochs``) pair: for each, the weights of its best
    epoch and its history, exactly what :func:`fit` gives with that rule alone.

    The stopping rule only decides when to stop and which epoch is best; the
    epochs themselves (weights, batches, negatives, learning rates) are the same
    whatever stops them, so each rule's run is a prefix of the longest one.
    Training goes on until every rule has stopped. ``model`` is left in eval
    mode with its last epoch's weights."""
    start = time.perf_counter()
    histories = [TrainHistory() for _ in rules]
    bests = [clone_state(model) for _ in rules]
    active = list(range(len(rules)))
    for number in range(1, max(max_epochs for _, max_epochs in rules) + 1):
        model.train()
        train_loss, val_loss = epoch()
        model.eval()
        best_now = False
        for i in list(active):
            stopper, max_epochs = rules[i]
            history = histories[i]
            history.train_losses.append(train_loss)
            history.val_losses.append(val_loss)
            stop = stopper.step(val_loss)
            if stopper.is_best:
                bests[i] = clone_state(model)
                best_now = True
            if stop or number == max_epochs:
                history.stopped_early = stop and number < max_epochs
                history.best_epoch = stopper.best_epoch
                history.seconds = time.perf_counter() - start
                active.remove(i)
        log.info("%s epoch %d: train %.5f, val %.5f%s", label, number, train_loss, val_loss,
                 " (best)" if best_now else "")  # fmt: skip
        if not active:
            break
    return list(zip(bests, histories, strict=True))


# ---- scoring a learned ranking with the retrieval engine ----


class BlockScorer(Protocol):
    """What :func:`mmalign.retrieval.relevant_ranks` needs of a scorer."""

    def block(self, queries: torch.Tensor, out: torch.Tensor) -> torch.Tensor: ...


def direction_rows(split: PairSplit, direction: str) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, gallery rows) of one direction's task, in the embeddings' .npy files."""
    return (split.text_rows, split.image_rows) if direction == "t2i" else (
        split.image_rows, split.text_rows)  # fmt: skip


def direction_task(split: PairSplit, direction: str) -> Task:
    """The test task of one direction: t2i = text queries over images, i2t the reverse."""
    if direction == "t2i":
        return Task.one_to_one(split.text, split.image)
    if direction == "i2t":
        return Task.one_to_one(split.image, split.text)
    raise ValueError(f"unknown direction {direction!r}; known: {DIRECTIONS}")


def ranked_rows(
    ranks: np.ndarray,
    task: Task,
    base: dict[str, Any],
    opts: RetrievalOptions,
    note: str = "",
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Long-form result rows (with bootstrap intervals) of one direction x metric,
    and the point estimates keyed ``hit_at_1``-style for summaries."""
    per_query = measures_per_query(ranks, task.rel_ptr, list(opts.ks))
    values = bootstrap(per_query, opts.bootstrap, opts.seed)
    rows = [{**base, **r} for r in rows_for(values, task.n_queries, note)]
    return rows, {name.replace("@", "_at_"): v[0] for name, v in values.items()}


def score_learned(
    scorer_for: Callable[[str], BlockScorer],
    test: PairSplit,
    metric: str,
    label: dict[str, str],
    opts: RetrievalOptions,
    sink: list[QueryRanks] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Rank every test candidate for every test query, both directions, with the
    retrieval module's exact engine; ``scorer_for(direction)`` gives the scorer.
    Each direction's :class:`~mmalign.retrieval.QueryRanks` goes to ``sink``."""
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, float]] = {}
    for direction in DIRECTIONS:
        task = direction_task(test, direction)
        log.info(
            "%s %s: %d queries x %d items", metric, direction, task.n_queries, len(task.gallery)
        )
        occurrence = np.zeros(len(task.gallery), dtype=np.int64)
        scorer = scorer_for(direction)
        ranks = relevant_ranks(scorer, task, opts.block_mb, occurrence)  # type: ignore[arg-type]
        base = {**label, "protocol": LEARNED_PROTOCOL, "direction": direction, "metric": metric}
        r, summary[direction] = ranked_rows(ranks, task, base, opts)
        rows += r
        if sink is not None:
            sink.append(QueryRanks.of(base, task, ranks, *direction_rows(test, direction),
                                      occurrence))  # fmt: skip
    return rows, summary


def na_rows(
    metric: str, n_queries: int, note: str, label: dict[str, str], opts: RetrievalOptions
) -> list[dict[str, Any]]:
    """Rows of a metric that cannot be computed, with the reason in ``note``."""
    nan = {m: (np.nan, np.nan, np.nan) for m in measure_names(opts.ks)}
    rows = []
    for direction in DIRECTIONS:
        base = {**label, "protocol": LEARNED_PROTOCOL, "direction": direction, "metric": metric}
        rows += [{**base, **r} for r in rows_for(nan, n_queries, note)]
    return rows


def result_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    frame["k"] = frame["k"].astype("Int64")
    return frame


def dimension_note(splits: PairSplits) -> str:
    """The n/a note for a variant that needs equal dimensions, '' when they are equal."""
    if splits.dim_text == splits.dim_image:
        return ""
    return (
        f"n/a: image {splits.dim_image}-d vs text {splits.dim_text}-d; the cosine "
        "target of the MSE loss needs equal dimensions (use an adapter)"
    )
