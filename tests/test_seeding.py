"""One seeding convention (mmalign.seeding), used by every module."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np

from mmalign import seeding

SRC = Path(__file__).resolve().parents[1] / "src" / "mmalign"


def test_streams_follow_the_seed_sequence_of_seed_and_purpose() -> None:
    assert np.array_equal(
        seeding.rng(5).integers(1 << 30, size=8), np.random.default_rng(5).integers(1 << 30, size=8)
    )
    expected = np.random.default_rng([3, zlib.crc32(b"tsne"), 7]).random(4)
    assert np.array_equal(seeding.rng(3, "tsne", 7).random(4), expected)
    state = np.random.SeedSequence([3, 11, 2]).generate_state(1)[0]
    assert seeding.int_seed(3, 11, 2) == int(state)
    # Different purposes, different streams; the same purpose, the same stream.
    assert seeding.rng(0, "a").random() != seeding.rng(0, "b").random()
    assert seeding.int_seed(0, "a") == seeding.int_seed(0, "a")


def test_no_module_seeds_a_generator_by_itself() -> None:
    """Every random stream in src/ comes from mmalign.seeding, never an ad hoc
    ``default_rng``, ``seed + 1`` or ``random_state=seed``."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "seeding.py":
            continue
        text = path.read_text()
        for pattern in (r"default_rng\(", r"SeedSequence\(", r"seed \+ \d", r"random_state=seed\b"):
            offenders += [f"{path.name}: {m}" for m in re.findall(pattern, text)]
    assert offenders == []
