"""Sharded embedding extraction, merging, and the optional PCA adapter.

A dataset's distinct images (in manifest order of first appearance) are cut
into ``n_shards`` contiguous slices; shard ``i`` embeds its images and every
caption of those images. A shard is the unit of GPU work and of restart: each
is written atomically, so a killed run resumes at the first missing shard.

The merged embeddings folder's format (rows in manifest order, ``meta.json``
with dimensions, throughput and the config) is :mod:`mmalign.embeddings`'s,
which also holds its torch-free writer and reader; :class:`Embeddings` and
the helpers are imported here for the callers that know them from this module.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmalign.config import schema_defaults
from mmalign.devices import torch_device
from mmalign.embeddings import Embeddings, split_manifest, write_embeddings
from mmalign.encoders import Encoder, ImageTower, Transform
from mmalign.images import load_image
from mmalign.io import atomic_path

log = logging.getLogger(__name__)


class EmbeddingError(RuntimeError):
    """A shard that cannot be embedded; the message names the shard and the row."""


def parse_scatteritem(item: str) -> tuple[int, int]:
    """Snakemake's ``"3-of-8"`` -> ``(2, 8)`` (a 0-based index and the count)."""
    index, _, total = item.partition("-of-")
    return int(index) - 1, int(total)


def shard_rows(n_images: int, index: int, n_shards: int) -> range:
    """Image rows of shard ``index`` of ``n_shards``: contiguous, sizes differ by at most 1."""
    if not 0 <= index < n_shards:
        raise ValueError(f"shard {index + 1} of {n_shards} does not exist")
    start = index * n_images // n_shards
    return range(start, (index + 1) * n_images // n_shards)


class ImageFiles(Dataset):
    """Decodes images in DataLoader workers: (row, pixels)."""

    def __init__(self, paths: list[str], transform: Transform, render_size: int) -> None:
        self.paths, self.transform, self.render_size = paths, transform, render_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, self.transform(load_image(self.paths[i], self.render_size))


_DEFAULTS = schema_defaults("embed")


@dataclass(frozen=True)
class EmbedOptions:
    """The ``embed`` config (see the schema: the defaults are its) and the rule's threads."""

    batch_size: int = _DEFAULTS["batch_size"]
    text_batch_size: int = _DEFAULTS["text_batch_size"]
    # Derived: the schema's num_workers: auto is threads - 1, resolved by from_config;
    # 1 is what auto gives a rule with 2 threads.
    num_workers: int = 1
    device: str = _DEFAULTS["device"]  # auto | cpu | cuda
    amp: bool = _DEFAULTS["amp"]  # bf16 autocast on CUDA
    cpu_inference: str = _DEFAULTS["cpu_inference"]  # onnx | freeze | eager

    @classmethod
    def from_config(cls, cfg: dict[str, Any], threads: int) -> EmbedOptions:
        return cls(
            batch_size=cfg["batch_size"],
            text_batch_size=cfg["text_batch_size"],
            num_workers=max(0, threads - 1) if cfg["num_workers"] == "auto" else cfg["num_workers"],
            device=cfg["device"],
            amp=cfg["amp"],
            cpu_inference=cfg["cpu_inference"],
        )


def _check_finite(array: np.ndarray, ids: list[str], what: str) -> None:
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise EmbeddingError(
            f"{what}: {int(bad.sum())} embeddings contain NaN or inf, first at "
            f"{ids[first]!r}; the model or its weights are broken for this input"
        )


def _autocast(device: torch.device, amp: bool) -> Any:
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def frozen_forward(tower: ImageTower) -> Callable[[torch.Tensor], torch.Tensor]:
    """The tower's forward as a frozen TorchScript graph, for CPU inference.

    Tracing records the module's ops on one input of the tower's size; freezing
    inlines the weights, and ``optimize_for_inference`` folds each batch norm
    into its convolution and picks oneDNN kernels. The arithmetic is reordered,
    not approximated: for EfficientNet-Lite0 every embedding is within 1e-5 of
    eager relative to its norm, and the result depends on neither the batch
    size nor the thread count (tested). Towers whose forward is not one
    ``nn.Module`` (closures over hub models) run eagerly.
    """
    if not isinstance(tower.forward, torch.nn.Module):
        return tower.forward
    example = torch.zeros(1, 3, tower.input_size, tower.input_size)
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit is deprecated in favour of torch.compile, which needs a
        # C++ toolchain and minutes of compiling per process; jit still works.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(tower.forward.eval(), example)
        graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
    log.info("image tower frozen for CPU inference (TorchScript)")

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return graph(pixels)

    return forward


def onnx_forward(tower: ImageTower) -> Callable[[torch.Tensor], torch.Tensor]:
    """The tower's forward exported to ONNX and run by ONNX Runtime, for CPU inference.

    The export traces the module on one input of the tower's size (batch
    dimension left free) into memory; ONNX Runtime then fuses each batch norm
    into its convolution and runs its own CPU kernels with as many threads as
    torch has. For EfficientNet-Lite0 that is about 1.8x the frozen TorchScript
    graph, every embedding within 1e-5 of eager relative to its norm, and the
    result depends on neither the batch size nor the thread count (tested).
    Towers whose forward is not one ``nn.Module`` run eagerly.
    """
    if not isinstance(tower.forward, torch.nn.Module):
        return tower.forward
    try:
        import onnxruntime
    except ImportError as err:
        raise EmbeddingError(
            "embed.cpu_inference: onnx needs onnxruntime and onnx (pip install "
            "'mmalign[torch]'); or set embed.cpu_inference: freeze"
        ) from err
    example = torch.zeros(1, 3, tower.input_size, tower.input_size)
    graph = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter: the torch.export-based one needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            tower.forward.eval(), (example,), graph, dynamo=False,
            input_names=["pixels"], output_names=["features"],
            dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
        )  # fmt: skip
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(
        graph.getvalue(), options, providers=["CPUExecutionProvider"]
    )
    log.info("image tower exported to ONNX for CPU inference (ONNX Runtime)")

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        (features,) = session.run(None, {"pixels": pixels.numpy()})
        return torch.from_numpy(features)

    return forward


#: ``embed.cpu_inference`` -> how the image tower's forward is built on the CPU.
CPU_FORWARD: dict[str, Callable[[ImageTower], Callable[[torch.Tensor], torch.Tensor]]] = {
    "onnx": onnx_forward,
    "freeze": frozen_forward,
    "eager": lambda tower: tower.forward,
}


def embed_images(
    encoder: Encoder, paths: list[str], opts: EmbedOptions, desc: str = "images"
) -> tuple[np.ndarray, float]:
    """Embed images in order; returns (features float32, images per second)."""
    device = torch_device(opts.device, "embed.device")
    tower = encoder.image
    forward = tower.forward
    if device.type == "cuda":
        tower.module.to(memory_format=torch.channels_last)
    else:
        forward = CPU_FORWARD[opts.cpu_inference](tower)
    loader = DataLoader(
        ImageFiles(paths, tower.transform, tower.render_size),
        batch_size=opts.batch_size,
        num_workers=opts.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    out = np.empty((len(paths), tower.dim), dtype=np.float32)
    start = time.perf_counter()
    with torch.inference_mode(), _autocast(device, opts.amp):
        for rows, pixels in tqdm(loader, desc=desc, unit="batch", mininterval=2):
            pixels = pixels.to(device, non_blocking=True)
            if device.type == "cuda":
                pixels = pixels.contiguous(memory_format=torch.channels_last)
            out[rows.numpy()] = forward(pixels).float().cpu().numpy()
    elapsed = time.perf_counter() - start
    return out, len(paths) / elapsed if elapsed > 0 else float("inf")


def length_batches(texts: list[str], size: int) -> list[np.ndarray]:
    """Row indices of ``texts`` in batches for :func:`embed_texts`: longest first
    (ties in input order), at most ``size`` a batch, and a batch ends before a
    caption less than half as long as its first, so no caption pads to more
    than twice its length (lengths in characters, a proxy for tokens)."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    batches: list[np.ndarray] = []
    lo = 0
    for hi in range(1, len(order) + 1):
        if hi == len(order) or hi - lo == size or 2 * len(texts[order[hi]]) < len(texts[order[lo]]):
            batches.append(order[lo:hi])
            lo = hi
    return batches


def embed_texts(
    encoder: Encoder, texts: list[str], opts: EmbedOptions, desc: str = "captions"
) -> tuple[np.ndarray, float]:
    """Embed captions; returns (features float32 in the order of ``texts``, captions
    per second).

    Captions run longest first (as sentence-transformers orders them) in batches
    of :func:`length_batches`, so a batch pads to little more than its own
    captions: on OpenClipArt, titles of ~6 tokens with a few of 100+, that
    takes ~35% off the time. Padding is masked, so a caption's embedding does
    not depend on its batch beyond float rounding (tested against one caption
    at a time)."""
    device = torch_device(opts.device, "embed.device")
    tower = encoder.text
    out = np.empty((len(texts), tower.dim), dtype=np.float32)
    start = time.perf_counter()
    with torch.inference_mode(), _autocast(device, opts.amp):
        for rows in tqdm(length_batches(texts, opts.text_batch_size), desc=desc, unit="batch",
                         mininterval=2):  # fmt: skip
            batch = {k: v.to(device) for k, v in tower.tokenize([texts[i] for i in rows]).items()}
            out[rows] = tower.forward(batch).float().cpu().numpy()
    elapsed = time.perf_counter() - start
    return out, len(texts) / elapsed if elapsed > 0 else float("inf")


def embed_shard(
    manifest: pd.DataFrame,
    encoder: Encoder,
    index: int,
    n_shards: int,
    opts: EmbedOptions,
    out_path: str | Path,
) -> dict[str, float]:
    """Embed shard ``index`` of ``n_shards`` and write it atomically as ``.npz``."""
    images, texts = split_manifest(manifest)
    rows = shard_rows(len(images), index, n_shards)
    shard_images = images.iloc[rows.start : rows.stop]
    shard_texts = texts[texts["image_row"].between(rows.start, rows.stop - 1)]
    label = f"shard {index + 1}/{n_shards}"
    log.info("%s: %d images, %d captions", label, len(shard_images), len(shard_texts))
    encoder.to(torch_device(opts.device, "embed.device"))
    image_ids = shard_images["image_id"].tolist()
    image_feats, images_per_s = embed_images(
        encoder, shard_images["image_path"].tolist(), opts, f"{label} images"
    )
    _check_finite(image_feats, image_ids, f"{label} images")
    text_feats, texts_per_s = embed_texts(
        encoder, shard_texts["caption"].tolist(), opts, f"{label} captions"
    )
    _check_finite(
        text_feats,
        [
            f"{i}#{c}"
            for i, c in zip(shard_texts["image_id"], shard_texts["caption_idx"], strict=True)
        ],
        f"{label} captions",
    )
    with atomic_path(out_path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            image=image_feats,
            text=text_feats,
            image_rows=np.asarray(rows, dtype=np.int64),
            text_rows=shard_texts.index.to_numpy(dtype=np.int64),
            images_per_s=images_per_s,
            texts_per_s=texts_per_s,
        )
    log.info("%s: %.1f images/s, %.1f captions/s", label, images_per_s, texts_per_s)
    return {"images_per_s": images_per_s, "texts_per_s": texts_per_s}


def merge_shards(
    manifest: pd.DataFrame, shard_paths: list[str], out_dir: str | Path, meta: dict[str, Any]
) -> dict[str, Any]:
    """Assemble the shards into the embeddings folder (see the module docstring)."""
    images, texts = split_manifest(manifest)
    out_dir = Path(out_dir)
    image_parts, text_parts, image_rates, text_rates = [], [], [], []
    image_rows, text_rows = [], []
    for path in shard_paths:
        with np.load(path) as npz:
            image_parts.append(npz["image"])
            text_parts.append(npz["text"])
            image_rows.append(npz["image_rows"])
            text_rows.append(npz["text_rows"])
            image_rates.append((len(npz["image_rows"]), float(npz["images_per_s"])))
            text_rates.append((len(npz["text_rows"]), float(npz["texts_per_s"])))
    image_rows_all, text_rows_all = np.concatenate(image_rows), np.concatenate(text_rows)
    if not np.array_equal(np.sort(image_rows_all), np.arange(len(images))) or not np.array_equal(
        np.sort(text_rows_all), np.arange(len(texts))
    ):
        raise EmbeddingError(
            f"{out_dir}: the shards do not cover the manifest exactly once "
            f"({len(image_rows_all)} image rows for {len(images)} images); the manifest "
            "changed after they were written: delete the shards and run again"
        )
    image = np.empty((len(images), image_parts[0].shape[1]), dtype=np.float32)
    text = np.empty((len(texts), text_parts[0].shape[1]), dtype=np.float32)
    image[image_rows_all] = np.concatenate(image_parts)
    text[text_rows_all] = np.concatenate(text_parts)
    summary = {
        **meta,
        "n_images": len(images),
        "n_texts": len(texts),
        "dim_image": int(image.shape[1]),
        "dim_text": int(text.shape[1]),
        "n_shards": len(shard_paths),
        "images_per_s": overall_rate(image_rates),
        "texts_per_s": overall_rate(text_rates),
    }
    write_embeddings(out_dir, image, text, images, texts, summary)
    return summary


def overall_rate(parts: list[tuple[int, float]]) -> float:
    """Items per second over shards given as (items, items per second): total / seconds."""
    total = sum(n for n, _ in parts)
    seconds = sum(n / r for n, r in parts if r > 0)
    return total / seconds if seconds else 0.0


def pca_fit(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components d x dim) of ``x`` by SVD, signs fixed for determinism."""
    if dim > min(x.shape):
        raise ValueError(
            f"PCA to {dim} dimensions needs at least {dim} rows and columns, got {x.shape}"
        )
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:dim].T
    signs = np.sign(comps[np.abs(comps).argmax(0), np.arange(dim)])
    return mean, comps * signs


def apply_adapter(
    raw: Embeddings, adapter: dict[str, Any], out_dir: str | Path, meta: dict[str, Any]
) -> dict[str, Any]:
    """Project each modality to ``adapter["dim"]`` by PCA fitted on its train rows only."""
    dim = adapter["dim"]
    train_images = (raw.images["split"] == "train").to_numpy()
    train_texts = (raw.texts["split"] == "train").to_numpy()
    if not train_images.any():
        raise EmbeddingError(f"{out_dir}: the PCA adapter needs a train split, and it is empty")
    projected = []
    for x, train in ((np.asarray(raw.image), train_images), (np.asarray(raw.text), train_texts)):
        mean, comps = pca_fit(x[train].astype(np.float64), dim)
        projected.append(((x - mean) @ comps).astype(np.float32))
    summary = {
        **raw.meta,
        **meta,
        "dim_image": dim,
        "dim_text": dim,
        "adapter": adapter,
        "adapter_fit_rows": {"image": int(train_images.sum()), "text": int(train_texts.sum())},
    }
    write_embeddings(Path(out_dir), projected[0], projected[1], raw.images, raw.texts, summary)
    return summary


def embed_shard_job(
    manifest_path: str,
    encoder_spec: dict[str, Any],
    embed_cfg: dict[str, Any],
    scatteritem: str,
    threads: int,
    seed: int,
    out_path: str,
) -> dict[str, float]:
    """The ``embed_shard`` rule: build the encoder and embed one shard."""
    from mmalign.encoders import build_encoder

    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    index, n_shards = parse_scatteritem(scatteritem)
    opts = EmbedOptions.from_config(embed_cfg, threads)
    log.info(
        "device %s, %d decode workers, batch %d",
        torch_device(opts.device, "embed.device"),
        opts.num_workers,
        opts.batch_size,
    )
    encoder = build_encoder(encoder_spec)
    return embed_shard(pd.read_parquet(manifest_path), encoder, index, n_shards, opts, out_path)
