"""Embedding throughput: end to end against the forward-only ceiling.

End to end = decode real OpenClipArt PNGs in DataLoader workers, transform,
forward (``mmalign.embed.embed_images``); the peer, measured in the same run,
is the same model and batch size on random tensors already in memory, which
no pipeline can beat. Text likewise: tokenise + forward against forward on
pre-tokenised batches. Prints each rate and the ratio (target >= 0.8). On the
CPU the ceiling is the configured ``embed.cpu_inference`` engine's (ONNX
Runtime by default), and the forward of every engine (onnx, freeze, eager)
is printed as a ratio against eager PyTorch's, all in the same run.

    python benchmarks/embed.py [--images 512] [--texts 4096] [--encoder minilm_effnet]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch

from mmalign.config import load_config
from mmalign.devices import torch_device
from mmalign.embed import CPU_FORWARD, EmbedOptions, embed_images, embed_texts
from mmalign.encoders import build_encoder
from mmalign.images import probe_image

ROOT = Path(__file__).resolve().parents[1]


def clipart_paths(n: int, max_pixels: int = 16_000_000) -> list[str]:
    pngs = sorted(Path("/usr/share/openclipart/png").rglob("*.png"))
    paths = []
    for p in pngs:
        if p.is_symlink():
            continue
        w, h = probe_image(p)
        if w * h <= max_pixels:
            paths.append(str(p))
        if len(paths) == n:
            break
    return paths


def forward_only_images(forward, side: int, n: int, opts: EmbedOptions) -> float:
    device = torch_device(opts.device, "embed.device")
    batch = torch.randn(opts.batch_size, 3, side, side, device=device)
    with torch.inference_mode():
        forward(batch)  # warm-up
        start = time.perf_counter()
        for _ in range(n // opts.batch_size):
            forward(batch)
    return (n // opts.batch_size) * opts.batch_size / (time.perf_counter() - start)


def forward_only_texts(encoder, texts: list[str], opts: EmbedOptions) -> float:
    step = opts.text_batch_size
    batches = [encoder.text.tokenize(texts[i : i + step]) for i in range(0, len(texts), step)]
    with torch.inference_mode():
        encoder.text.forward(batches[0])
        start = time.perf_counter()
        for batch in batches:
            encoder.text.forward(batch)
    return len(texts) / (time.perf_counter() - start)


def report(what: str, e2e: float, ceiling: float) -> None:
    print(
        f"{what}: end to end {e2e:.1f}/s, forward-only ceiling {ceiling:.1f}/s, "
        f"ratio {e2e / ceiling:.2f} (target >= 0.8)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--texts", type=int, default=4096)
    parser.add_argument("--encoder", default="minilm_effnet")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    config = load_config(str(ROOT / "config.yaml"))
    opts = EmbedOptions.from_config(config["embed"], args.threads)
    device = torch_device(opts.device, "embed.device")
    encoder = build_encoder(config["encoders"][args.encoder]).to(device)
    print(f"device {device}, {args.threads} threads, {opts.num_workers} decode workers")

    paths = clipart_paths(args.images)
    embed_images(encoder, paths[: opts.batch_size], opts)  # warm-up
    _, e2e = embed_images(encoder, paths, opts)
    tower = encoder.image
    if device.type == "cpu":
        rates = {
            engine: forward_only_images(build(tower), tower.input_size, len(paths), opts)
            for engine, build in CPU_FORWARD.items()
        }
        report("images", e2e, rates[opts.cpu_inference])
        for engine, rate in rates.items():
            print(f"image forward, {engine}: {rate:.1f}/s = {rate / rates['eager']:.2f}x eager")
    else:
        ceiling = forward_only_images(tower.forward, tower.input_size, len(paths), opts)
        report("images", e2e, ceiling)

    words = ["a", "red", "cat", "sleeping", "on", "the", "big", "blue", "boat", "near", "a"]
    words += ["small", "house", "with", "a", "flag"]
    texts = [" ".join(words[(i % 7) : (i % 7) + 3 + i % 9]) for i in range(args.texts)]
    _, e2e_t = embed_texts(encoder, texts, opts)
    ceiling_t = forward_only_texts(encoder, texts, opts)
    report("texts", e2e_t, ceiling_t)


if __name__ == "__main__":
    main()
