"""Learned similarities (paper Section 3, Eq. 1-4; Section 4.5; Tables 3, 4, 6)
and post-hoc alignment heads (beyond the paper).

Variants, one job each per (dataset, encoder):

- ``mlp_mse``, ``mlp_contrastive``: the paper's Optuna-searched MLPs
  (:mod:`mmalign.learn.mlp`);
- ``mlp_down``: the fixed 500-300-100 MLP with MSE (Table 6);
- ``align``: projection heads trained with symmetric InfoNCE, retrieval with
  every fixed metric in the shared space (:mod:`mmalign.learn.align`);
- ``align_linear``: regularised CCA, the linear baseline.

Every variant writes, under ``results/{dataset}/{encoder}/learn/``:
``{variant}.parquet`` (long-form retrieval rows, ``protocol`` =
``learned_test``: every test query against every test candidate, both
directions, with bootstrap intervals), ``{variant}.json`` (best parameters,
epochs run, early stops, test scores, the config used), ``{variant}.safetensors``
(the weights) and ``{variant}.trials.parquet`` (one row per Optuna trial or
grid point). The Optuna journal lives in ``{variant}.optuna/`` so that a
killed search resumes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from mmalign.devices import torch_device
from mmalign.embed import Embeddings
from mmalign.io import write_json, write_parquet
from mmalign.layout import FIXED_METRICS, MLP_VARIANTS, VARIANTS
from mmalign.learn.align import (
    ALIGNED_METRICS,
    AlignOptions,
    LinearOptions,
    run_align_variant,
    run_linear_variant,
)
from mmalign.learn.common import (
    EarlyStopping,
    LearnError,
    PairSplits,
    SplitTooSmall,
    na_rows,
    pair_splits,
    paper_lr_factor,
    result_frame,
    write_safetensors,
)
from mmalign.learn.mlp import (
    MLPOptions,
    VariantOutput,
    run_mlp_variant,
    trials_table,
)
from mmalign.retrieval import RetrievalOptions, hubness_rows, ranks_table, write_ranks

__all__ = [
    "EarlyStopping",
    "LearnError",
    "learn_job",
    "paper_lr_factor",
    "run_variant",
]

log = logging.getLogger(__name__)

# The metric names each variant writes rows for (align: the aligned space, then
# the raw fixed metrics on the same test pairs as the reference).
VARIANT_METRICS = {
    **{v: (v,) for v in MLP_VARIANTS},
    "align": (*ALIGNED_METRICS.values(), *FIXED_METRICS),
    "align_linear": ("align_linear",),
}


def run_variant(
    variant: str,
    splits: PairSplits,
    learn_cfg: dict[str, Any],
    ropts: RetrievalOptions,
    seed: int,
    device: torch.device,
    label: dict[str, str],
    study_dir: str | Path,
) -> VariantOutput:
    """Train and score one variant (see the module docstring)."""
    if variant in MLP_VARIANTS:
        opts = MLPOptions.from_config(learn_cfg["mlp"])
        return run_mlp_variant(variant, splits, opts, ropts, seed, device, label, study_dir)
    if variant == "align":
        opts_a = AlignOptions.from_config(learn_cfg["align"])
        return run_align_variant(splits, opts_a, ropts, seed, device, label)
    if variant == "align_linear":
        return run_linear_variant(splits, LinearOptions.from_config(learn_cfg["linear"]), ropts,
                                  label)  # fmt: skip
    raise LearnError(f"unknown learned variant {variant!r}; known: {VARIANTS}")


def learn_job(
    embeddings_dir: str | Path,
    variant: str,
    learn_cfg: dict[str, Any],
    retrieval_cfg: dict[str, Any],
    seed: int,
    threads: int,
    out_summary: str | Path,
    out_rows: str | Path,
    out_weights: str | Path,
    out_trials: str | Path,
    out_ranks: str | Path,
    out_hubness: str | Path,
    study_dir: str | Path,
    label: dict[str, str],
) -> dict[str, Any]:
    """The ``learn`` rule: one variant on one (dataset, encoder); writes its outputs
    (the rows' per-query ranks and hubness too, as the retrieval rule does)."""
    start = time.perf_counter()
    torch.set_num_threads(max(1, threads))
    # Optuna's trial messages go to the rule's log, not to a handler of its own.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    device = torch_device(learn_cfg["device"], "learn.device")
    ropts = RetrievalOptions.from_config(retrieval_cfg, seed)
    if variant not in VARIANTS:
        raise LearnError(f"unknown learned variant {variant!r}; known: {VARIANTS}")
    emb = Embeddings.load(embeddings_dir)
    try:
        splits = pair_splits(emb, learn_cfg["max_pairs"], seed, where=str(embeddings_dir))
    except SplitTooSmall as err:  # a tiny dataset: n/a rows, the rest of the workflow goes on
        log.warning("%s: %s", variant, err)
        note = f"n/a: {err}"
        rows = [r for m in VARIANT_METRICS[variant] for r in na_rows(m, 0, note, label, ropts)]
        out = VariantOutput(rows, {"status": "n/a", "note": note}, {}, {"note": note},
                            trials_table([], ""))  # fmt: skip
        splits = None
    else:
        log.info("%s on %s/%s: pairs %s, text %d-d, image %d-d, device %s", variant,
                 label["dataset"], label["encoder"], splits.sizes(), splits.dim_text,
                 splits.dim_image, device)  # fmt: skip
        out = run_variant(variant, splits, learn_cfg, ropts, seed, device, label, study_dir)
    n_test = len(splits.test) if splits else 0
    summary = {
        "variant": variant,
        **label,
        **out.summary,
        "pairs": splits.sizes() if splits else None,
        "dim_text": int(emb.text.shape[1]),
        "dim_image": int(emb.image.shape[1]),
        "chance": {f"hit_at_{k}": min(k, n_test) / n_test for k in ropts.ks} if n_test else None,
        "device": str(device),
        "seconds_total": round(time.perf_counter() - start, 3),
        "config": {"learn": learn_cfg, "seed": seed, "retrieval": retrieval_cfg},
    }
    write_parquet(result_frame(out.rows), out_rows)
    write_parquet(out.trials, out_trials)
    write_ranks(ranks_table(out.ranked, emb.texts, emb.images), out_ranks)
    write_parquet(hubness_rows(out.ranked), out_hubness)
    write_safetensors(out.tensors, out.metadata, out_weights)
    write_json(summary, out_summary)
    log.info("%s: done in %.1f s", variant, summary["seconds_total"])
    return summary
