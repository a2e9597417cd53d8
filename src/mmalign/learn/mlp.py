"""The paper's learned similarity: an MLP on concatenated features (Section 3).

``Z(cat(x_i, y_j))`` maps a text embedding x (d_text) and an image embedding y
(d_image) to one scalar in [-1, 1]: ReLU hidden layers, a ``tanh`` output.
Its architecture is searched with Optuna (1-5 hidden layers of 100-1100
units; objective: the validation loss), except ``mlp_down``, the fixed
500-300-100 MLP of Table 6.

Losses, on ``d_ij = Z(cat(x_i, y_j))``:

- ``contrastive`` (Eq. 1): ``L_ij = I_ij (1 - d_ij)^2 / 2 + (1 - I_ij) (d_ij + 1)^2 / 2``
  with ``I_ij = [i == j]`` (Eq. 2);
- ``mse``: ``L_ij = (d_ij - cos(x_i, y_j))^2``, regressing the pair's cosine
  similarity (so it needs d_text == d_image).

Both are averaged as Eq. 3-4 prescribe, over *all* N^2 pairs of a split:
``L(D) = 1/N sum_i 1/N sum_j L_ij``. That average is estimated by sampling:
each anchor i (a text for ``t2i``, an image for ``i2t``) contributes its
positive pair and ``negatives`` pairs with partners j drawn uniformly with
replacement from the other N - 1 items of the split, fresh for every batch,
weighted as Eq. 3 implies::

    L(anchor i) ~= (1/N) L_ii + ((N - 1)/N) * mean_{k} L_{i j_k}

which is unbiased for Eq. 3's ``1/N sum_j L_ij``; a batch's loss is the mean
over its ``batch_size`` anchors (Eq. 4). The validation loss is the same
estimator over every validation anchor with negatives drawn once from the
config's seed, so it is comparable across epochs and across Optuna trials.

Directions. Eq. 4 says the text-anchored and image-anchored averages are
equal in full; under sampling they differ in which side is anchored, so, as
the paper does, the contrastive loss trains one MLP per direction (``t2i``:
text anchors with sampled images; ``i2t``: image anchors with sampled texts),
both with the trial's architecture (one study per loss; its objective is the
mean of the two validation losses). **Decision** for MSE: the target
``cos(x_i, y_j)`` is symmetric and does not depend on a direction, so one MLP
(text-anchored sampling) serves both directions, the same function the paper's
two MSE MLPs would estimate twice.

Training (Section 3, last paragraph): Adam (beta 0.9, 0.999), learning rate
5e-5 times 1 / (1 + 2^(0.5 c)) in epoch c (0-based), at most ``max_epochs``
epochs, early stopping as :class:`mmalign.learn.common.EarlyStopping` (the
paper's previous-epoch rule unless ``stop_against`` says ``"best"``), the best
epoch's weights kept. Retrieval ranks every test candidate of every test query
by Z, in both directions: n_test^2 forward passes, batched. The first layer is
split as ``W [x; y] + b = W_x x + W_y y + b``, so each item's half is computed
once and the pairs are a broadcast sum (the same function, far fewer FLOPs).
Ranking uses Z's pre-``tanh`` value: ``tanh`` is monotone, so the order is the
same, without the float32 ties of a saturated ``tanh``.

The Optuna study lives on disk (a journal file) so an interrupted search
resumes: completed trials are kept, stale running ones are marked failed, and
the study continues until ``n_trials`` trials are complete. Each trial's
sampler is a TPE sampler seeded from (seed, slot), the slot being the number
of trials complete when it starts (its training seeds too), so a resumed study
proposes and trains exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
from optuna.trial import TrialState
from torch import nn

from mmalign import seeding
from mmalign.config import config_hash, schema_defaults
from mmalign.layout import DIRECTIONS, MLP_VARIANTS
from mmalign.learn.common import (
    EarlyStopping,
    PairSplit,
    PairSplits,
    TrainHistory,
    dimension_note,
    fit_shared,
    fused_on,
    na_rows,
    paper_lr_factor,
    score_learned,
    write_safetensors,
)
from mmalign.retrieval import QueryRanks, RetrievalOptions

log = logging.getLogger(__name__)

LOSSES = ("mse", "contrastive")


# ---- the model --------------------------------------------------------------


class SimilarityMLP(nn.Module):
    """Z(cat(text, image)) -> [-1, 1]: ReLU hidden layers ``hidden``, tanh output.

    ``forward(text, image)`` takes any broadcastable leading shapes, e.g. text
    (B, 1, d_text) with image (B, 1 + k, d_image) -> (B, 1 + k).
    """

    def __init__(self, dim_text: int, dim_image: int, hidden: Sequence[int]) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("the MLP needs at least one hidden layer")
        self.dim_text, self.dim_image, self.hidden = dim_text, dim_image, list(hidden)
        self.input = nn.Linear(dim_text + dim_image, hidden[0])  # acts on cat(text, image)
        layers: list[nn.Module] = [nn.ReLU()]
        for a, b in itertools.pairwise(hidden):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(hidden[-1], 1))
        self.body = nn.Sequential(*layers)

    def logits(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Z before its tanh. ``input(cat(x, y)) = W_x x + W_y y + b``, computed per
        side and broadcast, so the pairs never materialise the concatenation."""
        w_text, w_image = self.input.weight.split([self.dim_text, self.dim_image], dim=1)
        h = nn.functional.linear(text, w_text, self.input.bias)
        h = h + nn.functional.linear(image, w_image)
        return self.body(h).squeeze(-1)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.logits(text, image))


# ---- losses (Eq. 1-4) -------------------------------------------------------


def eq1_loss(d: torch.Tensor, positive: bool) -> torch.Tensor:
    """Eq. 1 elementwise: (1 - d)^2 / 2 for a positive pair, (d + 1)^2 / 2 for a negative."""
    return 0.5 * (1.0 - d) ** 2 if positive else 0.5 * (d + 1.0) ** 2


def all_pairs_estimate(pos: torch.Tensor, neg: torch.Tensor, n_items: int) -> torch.Tensor:
    """Eq. 3-4 from samples: mean over anchors of ``pos/N + (N-1)/N * mean_k neg``.

    pos: (B,) loss of each anchor's positive pair; neg: (B, k) losses of its k
    sampled negatives; n_items: N, the items of the split.
    """
    if n_items < 2:
        raise ValueError(f"the all-pairs average needs N >= 2 items, got {n_items}")
    per_anchor = pos / n_items + (n_items - 1) / n_items * neg.mean(dim=1)
    return per_anchor.mean()


def contrastive_loss(d: torch.Tensor, n_items: int) -> torch.Tensor:
    """Eq. 1 averaged as Eq. 3-4. d: (B, 1 + k), column 0 the positive pair."""
    return all_pairs_estimate(eq1_loss(d[:, 0], True), eq1_loss(d[:, 1:], False), n_items)


def mse_loss(d: torch.Tensor, target: torch.Tensor, n_items: int) -> torch.Tensor:
    """(d - cos)^2 averaged as Eq. 3-4. d, target: (B, 1 + k), column 0 the positive pair."""
    sq = (d - target) ** 2
    return all_pairs_estimate(sq[:, 0], sq[:, 1:], n_items)


def sample_negatives(
    anchors: torch.Tensor, n_items: int, k: int, generator: torch.Generator
) -> torch.Tensor:
    """(B, k) partners drawn uniformly with replacement from the N - 1 items != anchor."""
    j = torch.randint(0, n_items - 1, (len(anchors), k), generator=generator)
    return j + (j >= anchors[:, None]).long()


# ---- training ---------------------------------------------------------------


_DEFAULTS = schema_defaults("learn.mlp")


@dataclass(frozen=True)
class MLPOptions:
    """The ``learn.mlp`` config (see the schema: the defaults are its)."""

    n_trials: int = _DEFAULTS["n_trials"]
    max_epochs: int = _DEFAULTS["max_epochs"]
    batch_size: int = _DEFAULTS["batch_size"]
    lr: float = _DEFAULTS["lr"]
    patience: int = _DEFAULTS["patience"]
    min_delta: float = _DEFAULTS["min_delta"]
    negatives: int = _DEFAULTS["negatives"]
    layers: tuple[int, int] = tuple(_DEFAULTS["layers"])
    neurons: tuple[int, int] = tuple(_DEFAULTS["neurons"])
    down_hidden: tuple[int, ...] = tuple(_DEFAULTS["down_hidden"])
    lr_schedule: bool = _DEFAULTS["lr_schedule"]  # the paper's per-epoch factor; False = constant
    balanced: bool = _DEFAULTS["balanced"]  # positives and negatives 1/2 each, not 1/N and (N-1)/N
    # Not in the config (the ablation sets it): EarlyStopping's reference, "previous" (paper)
    # or "best".
    stop_against: str = "previous"

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> MLPOptions:
        return cls(
            n_trials=cfg["n_trials"],
            max_epochs=cfg["max_epochs"],
            batch_size=cfg["batch_size"],
            lr=cfg["lr"],
            patience=cfg["patience"],
            min_delta=cfg["min_delta"],
            negatives=cfg["negatives"],
            layers=tuple(cfg["layers"]),
            neurons=tuple(cfg["neurons"]),
            down_hidden=tuple(cfg["down_hidden"]),
            lr_schedule=cfg["lr_schedule"],
            balanced=cfg["balanced"],
        )


def constant_factor(epoch: int) -> float:
    """No schedule: the base learning rate in every epoch."""
    return 1.0


def lr_factor(opts: MLPOptions) -> Callable[[int], float]:
    """The learning rate's factor in epoch c (0-based) under ``opts``."""
    return paper_lr_factor if opts.lr_schedule else constant_factor


class _PairTensors:
    """One split on the device; builds the (anchor, 1 + k candidates) inputs."""

    def __init__(self, split: PairSplit, device: torch.device, balanced: bool = False) -> None:
        self.text = torch.from_numpy(split.text).to(device)
        self.image = torch.from_numpy(split.image).to(device)
        self.n = len(split)
        # Eq. 3-4 weigh the positive 1/N and the negatives (N-1)/N; N = 2 weighs them equally.
        self.weight_n = 2 if balanced else self.n

    def inputs(
        self, anchors: torch.Tensor, negatives: torch.Tensor, anchor: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(text, image) broadcastable to (B, 1 + k); column 0 is the positive."""
        cand = torch.cat([anchors[:, None], negatives], dim=1).to(self.text.device)
        anchors = anchors.to(self.text.device)
        if anchor == "t2i":  # text i against images (i, j_1..j_k)
            return self.text[anchors][:, None, :], self.image[cand]
        return self.text[cand], self.image[anchors][:, None, :]  # i2t: image i against texts


def batch_loss(
    model: SimilarityMLP,
    data: _PairTensors,
    anchors: torch.Tensor,
    negatives: torch.Tensor,
    anchor: str,
    loss: str,
) -> torch.Tensor:
    """The sampled Eq. 3-4 loss of one batch of anchors."""
    text, image = data.inputs(anchors, negatives, anchor)
    d = model(text, image)
    if loss == "contrastive":
        return contrastive_loss(d, data.weight_n)
    target = nn.functional.cosine_similarity(text, image, dim=-1)
    return mse_loss(d, target, data.weight_n)


def validation_loss(
    model: SimilarityMLP,
    data: _PairTensors,
    negatives: torch.Tensor,
    anchor: str,
    loss: str,
    chunk: int = 1024,
) -> float:
    """The Eq. 3-4 estimate over every validation anchor, with fixed negatives."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for lo in range(0, data.n, chunk):
            anchors = torch.arange(lo, min(lo + chunk, data.n))
            part = batch_loss(model, data, anchors, negatives[lo : lo + chunk], anchor, loss)
            total += float(part) * len(anchors)
    return total / data.n


#: The options that only say when training stops (and which epoch is best).
STOPPING_FIELDS = ("max_epochs", "patience", "min_delta", "stop_against")


def training_key(opts: MLPOptions) -> MLPOptions:
    """``opts`` without its stopping fields: runs with equal keys train alike."""
    return dataclasses.replace(opts, max_epochs=1, patience=1, min_delta=0.0,
                               stop_against="previous")  # fmt: skip


def train_mlp(
    splits: PairSplits,
    hidden: Sequence[int],
    loss: str,
    anchor: str,
    opts: MLPOptions,
    seed: int,
    val_seed: int,
    device: torch.device,
) -> tuple[SimilarityMLP, TrainHistory]:
    """Train one MLP; returns it with its best epoch's weights, and its history.

    ``seed`` drives the weights, batch order and negatives; ``val_seed`` the
    fixed validation negatives (the same for every trial of a study).
    """
    ((model, history),) = train_mlps_stopped_alike(
        splits, hidden, loss, anchor, [opts], seed, val_seed, device
    )
    return model, history


def train_mlps_stopped_alike(
    splits: PairSplits,
    hidden: Sequence[int],
    loss: str,
    anchor: str,
    options: Sequence[MLPOptions],
    seed: int,
    val_seed: int,
    device: torch.device,
) -> list[tuple[SimilarityMLP, TrainHistory]]:
    """:func:`train_mlp` for each of ``options``, which differ only in their
    :data:`STOPPING_FIELDS`, from one training run (:func:`learn.common.fit_shared`):
    each MLP and history is exactly what :func:`train_mlp` gives with its options."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {LOSSES}")
    if anchor not in DIRECTIONS:
        raise ValueError(f"unknown direction {anchor!r}; known: {DIRECTIONS}")
    opts = options[0]
    if any(training_key(o) != training_key(opts) for o in options):
        raise ValueError(f"options that train differently: {options}")
    torch.manual_seed(seed)
    model = SimilarityMLP(splits.dim_text, splits.dim_image, hidden).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr, betas=(0.9, 0.999),
                                 fused=fused_on(device))  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(opts))
    train = _PairTensors(splits.train, device, opts.balanced)
    val = _PairTensors(splits.val, device, opts.balanced)
    generator = torch.Generator().manual_seed(seed)
    val_negatives = sample_negatives(
        torch.arange(val.n), val.n, opts.negatives, torch.Generator().manual_seed(val_seed)
    )

    def epoch() -> tuple[float, float]:
        total = 0.0
        for anchors in torch.randperm(train.n, generator=generator).split(opts.batch_size):
            negatives = sample_negatives(anchors, train.n, opts.negatives, generator)
            value = batch_loss(model, train, anchors, negatives, anchor, loss)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            total += float(value.detach()) * len(anchors)
        schedule.step()
        return total / train.n, validation_loss(model, val, val_negatives, anchor, loss)

    rules = [
        (EarlyStopping(o.patience, o.min_delta, o.stop_against), o.max_epochs) for o in options
    ]
    label = f"{loss} {anchor} {'-'.join(map(str, hidden))}"
    trained = []
    for best, history in fit_shared(model, rules, epoch, label):
        mlp = copy.deepcopy(model)  # (a new SimilarityMLP would draw from torch's RNG)
        mlp.load_state_dict(best)
        trained.append((mlp.eval(), history))
    return trained


# ---- retrieval with a trained MLP --------------------------------------------


class MLPScorer:
    """Scores query rows against a fixed gallery by Z's pre-tanh value, for
    :func:`mmalign.retrieval.relevant_ranks`. ``direction`` says which side is
    the text: t2i = text queries over images, i2t = image queries over texts."""

    def __init__(
        self,
        model: SimilarityMLP,
        gallery: np.ndarray,
        direction: str,
        device: torch.device,
        block_mb: float = 256,
    ) -> None:
        self.model, self.direction, self.device = model.eval(), direction, device
        self.gallery = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32)).to(device)
        width = max(model.hidden)
        self.rows = max(1, int(block_mb * 2**20 // (4 * width * max(1, len(gallery)))))

    def block(self, queries: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        gallery = self.gallery[None, :, :]
        with torch.no_grad():
            for lo in range(0, len(queries), self.rows):
                q = queries[lo : lo + self.rows].to(self.device)[:, None, :]
                text, image = (q, gallery) if self.direction == "t2i" else (gallery, q)
                out[lo : lo + len(q)] = self.model.logits(text, image).float().cpu()
        return out


def score_mlps(
    models: dict[str, SimilarityMLP],
    test: PairSplit,
    metric: str,
    label: dict[str, str],
    ropts: RetrievalOptions,
    device: torch.device,
    sink: list[QueryRanks] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Test retrieval with trained MLPs (``both``, or one per direction) in both
    directions, as :func:`mmalign.learn.common.score_learned` scores it."""

    def scorer_for(direction: str) -> MLPScorer:
        model = models["both"] if "both" in models else models[direction]
        gallery = test.image if direction == "t2i" else test.text
        return MLPScorer(model, gallery, direction, device, ropts.block_mb)

    return score_learned(scorer_for, test, metric, label, ropts, sink)


# ---- the Optuna study --------------------------------------------------------


def suggest_hidden(
    trial: optuna.Trial, layers: tuple[int, int], neurons: tuple[int, int]
) -> list[int]:
    """The paper's search space: ``n_layers`` in [1, 5], ``n_units_l{i}`` in [100, 1100]."""
    n_layers = trial.suggest_int("n_layers", layers[0], layers[1])
    return [trial.suggest_int(f"n_units_l{i}", neurons[0], neurons[1]) for i in range(n_layers)]


def hidden_of(params: dict[str, Any]) -> list[int]:
    return [int(params[f"n_units_l{i}"]) for i in range(int(params["n_layers"]))]


def open_study(journal: str | Path, name: str, seed: int) -> optuna.Study:
    """The study ``name`` in the journal file ``journal``, created if absent.

    One job owns a study, so what a killed process left is cleared: its lock
    file (else the next writer waits for it; Optuna's stale-lock check also
    fails on a relative path and spins, hence the absolute one) and its
    trials left RUNNING, marked FAIL."""
    journal = Path(journal).resolve()
    journal.parent.mkdir(parents=True, exist_ok=True)
    lock = journal.with_name(journal.name + ".lock")
    if lock.is_symlink() or lock.exists():
        log.warning("%s: removing the lock a killed run left", lock)
        lock.unlink()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="minimize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seeding.int_seed(seed, 0)),
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("study %s: trial %d was left running by a killed run; marking it failed",
                    name, stale.number)  # fmt: skip
        storage.set_trial_state_values(stale._trial_id, TrialState.FAIL)
    return study


def complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def run_study(
    study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int, seed: int
) -> int:
    """Run trials until ``n_trials`` are complete; returns how many ran now.

    Each trial gets a TPE sampler seeded from (seed, slot), the slot being the
    number of trials complete when it starts, so neither the proposals nor the
    training seeds depend on whether (or where) the study was interrupted: a
    trial killed mid-way is marked failed and its slot is proposed again.
    """
    ran = 0
    while len(complete_trials(study)) < n_trials:
        slot = len(complete_trials(study))  # not the trial number: a killed trial leaves a gap
        study.sampler = optuna.samplers.TPESampler(seed=seeding.int_seed(seed, slot))
        study.optimize(objective, n_trials=1)
        ran += 1
    if ran == 0:
        log.info("study %s: %d trials already complete, nothing to run",
                 study.study_name, n_trials)  # fmt: skip
    return ran


def trials_table(trials: Sequence[optuna.trial.FrozenTrial], study_name: str) -> pd.DataFrame:
    """One row per trial: number, state, value, ``params_*``, and the user
    attributes (per direction: epochs run, stopped early, best epoch, best and
    per-epoch validation losses, per-epoch training losses, seconds)."""
    rows = []
    for t in trials:
        row: dict[str, Any] = {
            "study": study_name,
            "number": t.number,
            "state": t.state.name,
            "value": math.nan if t.value is None else float(t.value),
            "duration_s": t.duration.total_seconds() if t.duration else math.nan,
        }
        row.update({f"params_{k}": v for k, v in t.params.items()})
        row.update(t.user_attrs)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["study", "number", "state", "value", "duration_s"])
    params = sorted((c for c in frame.columns if c.startswith("params_")), key=_param_order)
    fixed = ["study", "number", "state", "value", "duration_s"]
    rest = [c for c in frame.columns if c not in fixed and c not in params]
    frame = frame[fixed + params + rest]
    for c in params:
        if c.startswith("params_n_"):  # architecture: integers, absent for unused layers
            frame[c] = frame[c].astype("Int64")
    return frame


def _param_order(name: str) -> tuple[int, str]:
    return (0, name) if name == "params_n_layers" else (1, name.zfill(40))


def history_attrs(direction: str, history: TrainHistory) -> dict[str, Any]:
    """A training history as trial attributes, suffixed by direction."""
    return {
        f"epochs_{direction}": history.epochs_run,
        f"stopped_early_{direction}": history.stopped_early,
        f"best_epoch_{direction}": history.best_epoch + 1,
        f"best_val_loss_{direction}": history.best_val_loss,
        f"val_losses_{direction}": list(history.val_losses),
        f"train_losses_{direction}": list(history.train_losses),
        f"seconds_{direction}": round(history.seconds, 3),
    }


# ---- one variant, end to end -------------------------------------------------


@dataclass
class VariantOutput:
    """What a variant hands to the job: rows, a summary, weights, a trials table."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    trials: pd.DataFrame
    ranked: list[QueryRanks] = field(default_factory=list)  # per-query outcomes of ``rows``


def data_digest(splits: PairSplits) -> str:
    """A hash of the train and validation arrays: a study restarts when they change."""
    h = hashlib.sha256()
    for part in (splits.train, splits.val):
        h.update(np.ascontiguousarray(part.text).tobytes())
        h.update(np.ascontiguousarray(part.image).tobytes())
    return h.hexdigest()[:16]


def mlp_directions(loss: str) -> tuple[str, ...]:
    """Contrastive: one MLP per direction; MSE: one MLP for both (text-anchored)."""
    return DIRECTIONS if loss == "contrastive" else ("both",)


def _anchor(direction: str) -> str:
    return "t2i" if direction == "both" else direction


def _pack(models: dict[str, SimilarityMLP]) -> dict[str, torch.Tensor]:
    return {
        f"{d}.{k}": v.detach().cpu().contiguous()
        for d, m in models.items()
        for k, v in m.state_dict().items()
    }


def _unpack(
    tensors: dict[str, torch.Tensor], splits: PairSplits, hidden: list[int], device: torch.device
) -> dict[str, SimilarityMLP]:
    models: dict[str, SimilarityMLP] = {}
    for d in sorted({k.split(".", 1)[0] for k in tensors}):
        model = SimilarityMLP(splits.dim_text, splits.dim_image, hidden)
        model.load_state_dict(
            {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{d}.")}
        )
        models[d] = model.to(device).eval()
    return models


def run_mlp_variant(
    variant: str,
    splits: PairSplits,
    opts: MLPOptions,
    ropts: RetrievalOptions,
    seed: int,
    device: torch.device,
    label: dict[str, str],
    study_dir: str | Path,
) -> VariantOutput:
    """``mlp_mse``/``mlp_contrastive``: an Optuna study, then test retrieval with
    the best trial's MLP(s); ``mlp_down``: the fixed 500-300-100 MSE MLP."""
    from safetensors.torch import load_file

    loss = MLP_VARIANTS[variant]
    directions = mlp_directions(loss)
    note = dimension_note(splits) if loss == "mse" else ""
    summary: dict[str, Any] = {"loss": loss, "directions": {}, "test": {}}
    if note:
        log.warning("%s: %s", variant, note)
        summary.update(status="n/a", note=note)
        return VariantOutput(
            na_rows(variant, len(splits.test), note, label, ropts),
            summary,
            {},
            {"note": note},
            trials_table([], ""),
        )
    val_seed = seeding.int_seed(seed, 7)  # the same validation negatives for every trial

    def train_all(
        hidden: list[int], number: int
    ) -> tuple[dict[str, SimilarityMLP], dict[str, TrainHistory]]:
        models, histories = {}, {}
        for k, d in enumerate(directions):
            models[d], histories[d] = train_mlp(
                splits,
                hidden,
                loss,
                _anchor(d),
                opts,
                seeding.int_seed(seed, number, k),
                val_seed,
                device,
            )
        return models, histories

    if variant == "mlp_down":
        hidden = list(opts.down_hidden)
        models, histories = train_all(hidden, 0)
        now = optuna.trial.create_trial(
            params={"n_layers": len(hidden), **{f"n_units_l{i}": h for i, h in enumerate(hidden)}},
            distributions={
                "n_layers": optuna.distributions.IntDistribution(len(hidden), len(hidden)),
                **{
                    f"n_units_l{i}": optuna.distributions.IntDistribution(h, h)
                    for i, h in enumerate(hidden)
                },
            },
            value=float(np.mean([h.best_val_loss for h in histories.values()])),
            user_attrs={k: v for d, h in histories.items() for k, v in history_attrs(d, h).items()},
        )
        now.number = 0
        trials, best_number, study_name = [now], 0, "fixed"
    else:
        study_name = f"{variant}-" + config_hash(
            {"opts": {**opts.__dict__, "n_trials": None}, "seed": seed, "data": data_digest(splits)}
        )
        study_dir = Path(study_dir)
        cache = study_dir / "best.safetensors"
        study = open_study(study_dir / "journal.log", study_name, seed)

        def objective(trial: optuna.Trial) -> float:
            slot = len(complete_trials(trial.study))  # what run_study seeded the sampler with
            trial.set_user_attr("slot", slot)
            hidden = suggest_hidden(trial, opts.layers, opts.neurons)
            models, histories = train_all(hidden, slot)
            for d, h in histories.items():
                for key, value in history_attrs(d, h).items():
                    trial.set_user_attr(key, value)
            value = float(np.mean([h.best_val_loss for h in histories.values()]))
            done = [t.value for t in complete_trials(trial.study) if t.value is not None]
            if not done or value < min(done):
                meta = {"study": study_name, "trial": str(trial.number)}
                write_safetensors(_pack(models), meta, cache)
            log.info("%s trial %d: hidden %s, value %.6f", variant, trial.number, hidden, value)
            return value

        ran = run_study(study, objective, opts.n_trials, seed)
        summary["trials_run_now"] = ran
        best = study.best_trial
        best_number, hidden = best.number, hidden_of(best.params)
        trials = study.get_trials(deepcopy=False)
        models = {}
        if cache.exists():
            from safetensors import safe_open

            with safe_open(str(cache), "pt") as fh:
                meta = fh.metadata() or {}
            if meta.get("study") == study_name and meta.get("trial") == str(best_number):
                models = _unpack(load_file(str(cache)), splits, hidden, device)
        if not models:  # the best trial's weights were lost: retrain it (same seeds)
            log.info("%s: retraining trial %d from its seeds", variant, best_number)
            models, _ = train_all(hidden, int(best.user_attrs.get("slot", best_number)))
    best_trial = next(t for t in trials if t.number == best_number)
    summary["best_trial"] = best_number
    summary["best_value"] = best_trial.value
    summary["best_params"] = {**best_trial.params, "hidden": hidden}
    summary["n_trials_complete"] = sum(t.state == TrialState.COMPLETE for t in trials)
    summary["study"] = study_name
    for d in directions:
        attrs = best_trial.user_attrs
        summary["directions"][d] = {
            "epochs_run": attrs[f"epochs_{d}"],
            "stopped_early": attrs[f"stopped_early_{d}"],
            "best_epoch": attrs[f"best_epoch_{d}"],
            "best_val_loss": attrs[f"best_val_loss_{d}"],
        }

    ranked: list[QueryRanks] = []
    rows, summary["test"][variant] = score_mlps(models, splits.test, variant, label, ropts, device,
                                                ranked)  # fmt: skip
    summary["status"] = "ok"
    metadata = {
        "variant": variant,
        "loss": loss,
        "hidden": ",".join(map(str, hidden)),
        "directions": ",".join(directions),
        "dim_text": str(splits.dim_text),
        "dim_image": str(splits.dim_image),
        "input": "cat(text, image)",
        "study": study_name,
        "trial": str(best_number),
    }
    return VariantOutput(rows, summary, _pack(models), metadata, trials_table(trials, study_name),
                         ranked)  # fmt: skip
