"""Post-hoc alignment of frozen embeddings (beyond the paper; its open Q1, Q3).

``align``: two small projection heads, one per modality, map frozen text
embeddings (d_text) and image embeddings (d_image) into one shared space of
``dim`` dimensions, so the modalities may differ in size (the default pair is
384-d text vs 1280-d image). Each input is first standardised per feature
with its modality's train-split mean and standard deviation. A head is
``Dropout -> Linear(d, hidden) -> GELU -> Linear(hidden, dim)``, or one
``Linear(d, dim)`` when ``hidden`` is null. The heads are trained on the train
split with the symmetric InfoNCE loss of CLIP (Radford et al. 2021)::

    logits_ij = s * <t_i / |t_i|, v_j / |v_j|>,   s = exp(logit_scale)
    L = (CE(logits, diag) + CE(logits^T, diag)) / 2

over the pairs of a batch, with a learnable temperature (``logit_scale``
starts at log(1 / temperature) and is clamped to log(max_logit_scale) after
every step, as CLIP does). AdamW; early stopping on the validation loss (the
same InfoNCE over the whole validation split as one batch, computed blockwise)
with :class:`mmalign.learn.common.EarlyStopping`; the best epoch's weights are
kept. Retrieval runs in the shared space with the retrieval module's exact
engine: ``align`` is cosine there, ``align_euclidean``, ``align_manhattan``
and ``align_chi2`` the other fixed metrics on the heads' raw (unnormalised)
outputs, so the four can be compared in one space. The same test split's raw
fixed metrics (``cosine``, ``euclidean``, ... on the frozen embeddings; n/a
when the dimensions differ) are written beside them as the reference.

``align_linear``, the linear baseline: regularised CCA (one method for equal
and unequal dimensions). Each modality is centred on its train mean;
``C_tt + r I``, ``C_vv + r I`` (r = ``ridge`` x the mean eigenvalue) are
whitened; the SVD of the whitened cross-covariance gives the canonical
directions; both modalities are projected onto the first ``k`` of them, each
direction scaled by its canonical correlation, and ranked by cosine. ``k``
and ``ridge`` are chosen from the config's grids by the validation MRR (the
mean of both directions); the test split is never looked at to choose.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

from mmalign import seeding
from mmalign.config import schema_defaults
from mmalign.embed import Embeddings
from mmalign.layout import DIRECTIONS, FIXED_METRICS, LEARNED_PROTOCOL
from mmalign.learn.common import (
    EarlyStopping,
    PairSplit,
    PairSplits,
    TrainHistory,
    direction_rows,
    direction_task,
    fit,
    fused_on,
    na_rows,
    pair_splits,
    ranked_rows,
)
from mmalign.learn.mlp import VariantOutput, history_attrs, trials_table
from mmalign.metrics import Scorer
from mmalign.retrieval import QueryRanks, RetrievalOptions, Task, relevant_ranks, score_task

log = logging.getLogger(__name__)

ALIGNED_METRICS = {
    "cosine": "align",
    "euclidean": "align_euclidean",
    "manhattan": "align_manhattan",
    "chi2": "align_chi2",
}


_DEFAULTS = schema_defaults("learn.align")


@dataclass(frozen=True)
class AlignOptions:
    """The ``learn.align`` config (see the schema: the defaults are its)."""

    dim: int = _DEFAULTS["dim"]
    hidden: int | None = _DEFAULTS["hidden"]
    dropout: float = _DEFAULTS["dropout"]
    epochs: int = _DEFAULTS["epochs"]
    lr: float = _DEFAULTS["lr"]
    weight_decay: float = _DEFAULTS["weight_decay"]
    batch_size: int = _DEFAULTS["batch_size"]
    patience: int = _DEFAULTS["patience"]
    min_delta: float = _DEFAULTS["min_delta"]
    temperature: float = _DEFAULTS["temperature"]
    max_logit_scale: float = _DEFAULTS["max_logit_scale"]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> AlignOptions:
        return cls(**{k: cfg[k] for k in cls.__dataclass_fields__})


class ProjectionHead(nn.Module):
    """(n, d_in) -> (n, dim): Dropout -> Linear -> GELU -> Linear, or Linear alone."""

    def __init__(self, d_in: int, dim: int, hidden: int | None, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)] if dropout > 0 else []
        if hidden is None:
            layers.append(nn.Linear(d_in, dim))
        else:
            layers += [nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AlignmentHeads(nn.Module):
    """One head per modality, each after a fixed per-feature standardisation,
    and CLIP's learnable logit scale."""

    def __init__(self, stats: dict[str, torch.Tensor], opts: AlignOptions) -> None:
        """``stats``: ``{text,image}_{mean,std}`` from :func:`standardisation`."""
        super().__init__()
        for name, value in stats.items():
            self.register_buffer(name, value)
        self.text_head = ProjectionHead(
            len(stats["text_mean"]), opts.dim, opts.hidden, opts.dropout
        )
        self.image_head = ProjectionHead(
            len(stats["image_mean"]), opts.dim, opts.hidden, opts.dropout
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / opts.temperature)))
        self.max_log_scale = math.log(opts.max_logit_scale)

    def text(self, x: torch.Tensor) -> torch.Tensor:
        """(n, d_text) -> (n, dim), unnormalised."""
        return self.text_head((x - self.text_mean) / self.text_std)

    def image(self, y: torch.Tensor) -> torch.Tensor:
        """(n, d_image) -> (n, dim), unnormalised."""
        return self.image_head((y - self.image_mean) / self.image_std)

    def clamp_(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(max=self.max_log_scale)


def load_heads(path: str | Path, opts: AlignOptions) -> AlignmentHeads:
    """Trained heads from the ``align`` variant's safetensors file (``opts``: the
    ``learn.align`` config they were trained with), in eval mode on the CPU."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    stats = {k: state[k] for k in ("text_mean", "text_std", "image_mean", "image_std")}
    model = AlignmentHeads(stats, opts)
    model.load_state_dict(state)
    return model.eval()


def aligned_test_split(
    emb: Embeddings, heads: str | Path, learn_cfg: dict[str, Any], seed: int, where: str = ""
) -> tuple[PairSplit, PairSplit]:
    """The learned stage's test split (the same pairs and seed as the ``learn``
    rule), raw and in the shared space of the heads stored at ``heads``."""
    test = pair_splits(emb, learn_cfg["max_pairs"], seed, where=where).test
    model = load_heads(heads, AlignOptions.from_config(learn_cfg["align"]))
    return test, project(model, test, torch.device("cpu"))


def standardisation(train: PairSplit) -> dict[str, torch.Tensor]:
    """Per-feature mean and standard deviation (>= 1e-6) of each modality's train rows."""
    out = {}
    for name, x in (("text", train.text), ("image", train.image)):
        x64 = x.astype(np.float64)
        out[f"{name}_mean"] = torch.from_numpy(x64.mean(0).astype(np.float32))
        out[f"{name}_std"] = torch.from_numpy(np.maximum(x64.std(0), 1e-6).astype(np.float32))
    return out


def symmetric_info_nce(
    text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's loss for a batch of n pairs: text (n, D), image (n, D), row i matching row i.

    ``(CE(S, I) + CE(S^T, I)) / 2`` with ``S = exp(logit_scale) * cos``.
    """
    t = nn.functional.normalize(text, dim=1)
    v = nn.functional.normalize(image, dim=1)
    logits = logit_scale.exp() * t @ v.T
    labels = torch.arange(len(t), device=t.device)
    return 0.5 * (
        nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels)
    )


def blockwise_info_nce(
    text: torch.Tensor, image: torch.Tensor, logit_scale: torch.Tensor, rows: int = 2048
) -> float:
    """:func:`symmetric_info_nce` over all n pairs as one batch, without the n x n matrix."""
    t = nn.functional.normalize(text, dim=1)
    v = nn.functional.normalize(image, dim=1)
    scale = logit_scale.exp()
    n = len(t)
    diag = scale * (t * v).sum(1)
    row_lse = torch.empty(n, device=t.device, dtype=t.dtype)
    col_lse = torch.full((n,), -math.inf, device=t.device, dtype=t.dtype)
    for lo in range(0, n, rows):
        block = scale * t[lo : lo + rows] @ v.T
        row_lse[lo : lo + rows] = block.logsumexp(1)
        col_lse = torch.logaddexp(col_lse, block.logsumexp(0))
    return float(0.5 * ((row_lse - diag).mean() + (col_lse - diag).mean()))


def train_align(
    splits: PairSplits, opts: AlignOptions, seed: int, device: torch.device
) -> tuple[AlignmentHeads, TrainHistory]:
    """Train the heads on the train split; returns the best epoch's heads and the history."""
    torch.manual_seed(seed)
    model = AlignmentHeads(standardisation(splits.train), opts).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay,
                                  fused=fused_on(device))  # fmt: skip
    t_train = torch.from_numpy(splits.train.text).to(device)
    v_train = torch.from_numpy(splits.train.image).to(device)
    t_val = torch.from_numpy(splits.val.text).to(device)
    v_val = torch.from_numpy(splits.val.image).to(device)
    generator = torch.Generator().manual_seed(seed)
    n = len(t_train)

    def epoch() -> tuple[float, float]:
        total = 0.0
        for idx in torch.randperm(n, generator=generator).split(opts.batch_size):
            if len(idx) < 2:  # InfoNCE needs a negative
                continue
            idx = idx.to(device)
            loss = symmetric_info_nce(model.text(t_train[idx]), model.image(v_train[idx]),
                                      model.logit_scale)  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.clamp_()
            total += float(loss.detach()) * len(idx)
        with torch.no_grad():
            model.eval()
            val = blockwise_info_nce(model.text(t_val), model.image(v_val), model.logit_scale)
        return total / n, val

    stopper = EarlyStopping(opts.patience, opts.min_delta, against="best")
    history = fit(model, opts.epochs, stopper, epoch, "align")
    return model, history


def project(model: AlignmentHeads, split: PairSplit, device: torch.device) -> PairSplit:
    """A split mapped into the shared space (heads' raw outputs, float32)."""
    with torch.no_grad():
        t = model.text(torch.from_numpy(split.text).to(device)).float().cpu().numpy()
        v = model.image(torch.from_numpy(split.image).to(device)).float().cpu().numpy()
    return PairSplit(t, v, split.text_rows, split.image_rows)


def fixed_metric_rows(
    split: PairSplit,
    names: dict[str, str],
    label: dict[str, str],
    opts: RetrievalOptions,
    note: str = "",
    sink: list[QueryRanks] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, dict[str, float]]]]:
    """Rows of the fixed metrics on one split's pairs, metric ``m`` reported as
    ``names[m]``; the per-query outcomes go to ``sink``."""
    rows: list[dict[str, Any]] = []
    summary: dict[str, dict[str, dict[str, float]]] = {}
    if note:
        for name in names.values():
            rows += na_rows(name, len(split), note, label, opts)
        return rows, summary
    for metric, name in names.items():
        summary[name] = {}
        for direction in DIRECTIONS:
            task = direction_task(split, direction)
            occurrence = np.zeros(len(task.gallery), dtype=np.int64)
            ranks = score_task(task, metric, None, opts, occurrence)
            base = {**label, "protocol": LEARNED_PROTOCOL, "direction": direction, "metric": name}
            r, summary[name][direction] = ranked_rows(ranks, task, base, opts)
            rows += r
            if sink is not None:
                sink.append(QueryRanks.of(base, task, ranks, *direction_rows(split, direction),
                                          occurrence))  # fmt: skip
    return rows, summary


def raw_reference(
    splits: PairSplits,
    label: dict[str, str],
    opts: RetrievalOptions,
    sink: list[QueryRanks] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The frozen embeddings' fixed metrics on the same test pairs."""
    note = ""
    if splits.dim_text != splits.dim_image:
        note = (
            f"n/a: image {splits.dim_image}-d vs text {splits.dim_text}-d; metrics between "
            "the raw spaces need equal dimensions (use an adapter)"
        )
    return fixed_metric_rows(splits.test, {m: m for m in FIXED_METRICS}, label, opts, note, sink)


def run_align_variant(
    splits: PairSplits,
    opts: AlignOptions,
    ropts: RetrievalOptions,
    seed: int,
    device: torch.device,
    label: dict[str, str],
) -> VariantOutput:
    """Train the heads, then retrieve in the shared space with every fixed metric."""
    model, history = train_align(splits, opts, seeding.int_seed(seed, 0), device)
    aligned = project(model, splits.test, device)
    ranked: list[QueryRanks] = []
    rows, test = fixed_metric_rows(aligned, ALIGNED_METRICS, label, ropts, sink=ranked)
    raw_rows, raw_test = raw_reference(splits, label, ropts, ranked)
    params = dict(opts.__dict__)
    trial = optuna.trial.create_trial(
        params={},
        distributions={},
        value=history.best_val_loss,
        user_attrs={
            **{f"config_{k}": v for k, v in params.items() if v is not None},
            **history_attrs("both", history),
        },
    )
    trial.number = 0
    summary = {
        "status": "ok",
        "best_params": params,
        "directions": {"both": history.summary()},
        "logit_scale": float(model.logit_scale.detach().exp()),
        "test": test,
        "raw_test": raw_test,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "variant": "align",
        "dim_text": str(splits.dim_text),
        "dim_image": str(splits.dim_image),
        "dim": str(opts.dim),
        "hidden": "linear" if opts.hidden is None else str(opts.hidden),
        "inputs": "standardised with the stored train means and stds",
    }
    return VariantOutput(
        rows + raw_rows, summary, tensors, metadata, trials_table([trial], "fixed"), ranked
    )


# ---- the linear baseline: regularised CCA -------------------------------------


_LINEAR_DEFAULTS = schema_defaults("learn.linear")


@dataclass(frozen=True)
class LinearOptions:
    """The ``learn.linear`` config: grids searched on the validation split (see the
    schema: the defaults are its)."""

    dims: tuple[int, ...] = tuple(_LINEAR_DEFAULTS["dims"])
    ridge: tuple[float, ...] = tuple(_LINEAR_DEFAULTS["ridge"])

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> LinearOptions:
        return cls(dims=tuple(cfg["dims"]), ridge=tuple(cfg["ridge"]))


@dataclass
class CCA:
    """Centred, whitened canonical projections: ``(x - mean) @ proj`` (n x k each)."""

    text_mean: np.ndarray
    image_mean: np.ndarray
    text_proj: np.ndarray  # d_text x k_max, columns scaled by their correlation
    image_proj: np.ndarray  # d_image x k_max
    correlations: np.ndarray  # k_max

    def project(self, split: PairSplit, k: int) -> PairSplit:
        t = (split.text.astype(np.float64) - self.text_mean) @ self.text_proj[:, :k]
        v = (split.image.astype(np.float64) - self.image_mean) @ self.image_proj[:, :k]
        return PairSplit(t.astype(np.float32), v.astype(np.float32), split.text_rows,
                         split.image_rows)  # fmt: skip


def _inverse_sqrt(values: np.ndarray, vectors: np.ndarray, ridge: float) -> np.ndarray:
    """(C + r I)^(-1/2) from C's eigendecomposition, r = ridge x the mean eigenvalue of C."""
    reg = ridge * max(float(values.mean()), 1e-12)
    return (vectors / np.sqrt(np.maximum(values, 0) + reg)) @ vectors.T


def fit_cca(train: PairSplit, ridges: tuple[float, ...]) -> dict[float, CCA]:
    """Regularised CCA of train texts and images for each ridge, every canonical
    direction kept (each covariance is eigendecomposed once for all ridges)."""
    x = train.text.astype(np.float64)
    y = train.image.astype(np.float64)
    mx, my = x.mean(0), y.mean(0)
    x, y = x - mx, y - my
    n = len(x)
    eig_x, eig_y = np.linalg.eigh(x.T @ x / n), np.linalg.eigh(y.T @ y / n)
    cross = x.T @ y / n
    fits = {}
    for ridge in ridges:
        wx, wy = _inverse_sqrt(*eig_x, ridge), _inverse_sqrt(*eig_y, ridge)
        u, s, vt = np.linalg.svd(wx @ cross @ wy, full_matrices=False)
        k = min(len(s), n - 1)
        # Signs fixed for determinism (largest |entry| of each text direction positive).
        signs = np.sign(u[np.abs(u[:, :k]).argmax(0), np.arange(k)])
        signs[signs == 0] = 1
        text_proj = wx @ (u[:, :k] * signs) * s[:k]
        image_proj = wy @ (vt[:k].T * signs) * s[:k]
        fits[ridge] = CCA(mx, my, text_proj, image_proj, s[:k])
    return fits


def mean_mrr(split: PairSplit, opts: RetrievalOptions) -> float:
    """Mean reciprocal rank under cosine, averaged over both directions."""
    out = []
    for direction in DIRECTIONS:
        task: Task = direction_task(split, direction)
        gallery = torch.from_numpy(np.ascontiguousarray(task.gallery, dtype=np.float32))
        ranks = relevant_ranks(Scorer("cosine", gallery), task, opts.block_mb)
        out.append(float(np.mean(1.0 / ranks)))
    return float(np.mean(out))


def run_linear_variant(
    splits: PairSplits,
    opts: LinearOptions,
    ropts: RetrievalOptions,
    label: dict[str, str],
) -> VariantOutput:
    """Regularised CCA, (k, ridge) chosen on validation MRR, cosine on the test split."""
    start = time.perf_counter()
    trials, best = [], None
    max_k = min(splits.dim_text, splits.dim_image, len(splits.train) - 1)
    dims = sorted({min(k, max_k) for k in opts.dims})
    fits = fit_cca(splits.train, opts.ridge)
    for number, (ridge, k) in enumerate(itertools.product(opts.ridge, dims)):
        value = mean_mrr(fits[ridge].project(splits.val, k), ropts)
        trial = optuna.trial.create_trial(
            params={"dim": k, "ridge": ridge},
            distributions={
                "dim": optuna.distributions.IntDistribution(1, max(max_k, 1)),
                "ridge": optuna.distributions.FloatDistribution(0.0, max(opts.ridge) + 1.0),
            },
            value=value,
            user_attrs={"val_mrr": value},
        )
        trial.number = number
        trials.append(trial)
        log.info("align_linear: k %d, ridge %g -> validation MRR %.4f", k, ridge, value)
        if best is None or value > best[0]:
            best = (value, ridge, k, number)
    assert best is not None
    value, ridge, k, number = best
    cca = fits[ridge]
    ranked: list[QueryRanks] = []
    rows, test = fixed_metric_rows(cca.project(splits.test, k), {"cosine": "align_linear"},
                                   label, ropts, sink=ranked)  # fmt: skip
    summary = {
        "status": "ok",
        "method": "regularised CCA, cosine",
        "best_trial": number,
        "best_params": {"dim": k, "ridge": ridge},
        "best_val_mrr": value,
        "top_correlations": [float(c) for c in cca.correlations[:5]],
        "seconds": round(time.perf_counter() - start, 3),
        "test": test,
    }
    tensors = {
        "text_mean": torch.from_numpy(cca.text_mean.astype(np.float32)),
        "image_mean": torch.from_numpy(cca.image_mean.astype(np.float32)),
        "text_proj": torch.from_numpy(np.ascontiguousarray(cca.text_proj[:, :k], dtype=np.float32)),
        "image_proj": torch.from_numpy(
            np.ascontiguousarray(cca.image_proj[:, :k], dtype=np.float32)
        ),
        "correlations": torch.from_numpy(cca.correlations[:k].astype(np.float32)),
    }
    metadata = {"variant": "align_linear", "use": "(x - mean) @ proj, then cosine",
                "dim": str(k), "ridge": str(ridge)}  # fmt: skip
    return VariantOutput(rows, summary, tensors, metadata, trials_table(trials, "grid"), ranked)
