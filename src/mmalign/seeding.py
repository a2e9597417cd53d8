"""The one seeding convention: every random choice draws from the config's
``seed`` and a purpose (strings and integers naming what it is for), through
``numpy.random.SeedSequence([seed, *keys])``. Streams with different purposes
are independent, so adding a random choice never shifts another."""

from __future__ import annotations

import zlib

import numpy as np

Key = int | str


def seed_sequence(seed: int, *keys: Key) -> np.random.SeedSequence:
    """``SeedSequence([seed, *keys])``, a string key entering as its CRC-32."""
    words = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.SeedSequence([int(seed), *words])


def rng(seed: int, *keys: Key) -> np.random.Generator:
    """A NumPy generator for ``(seed, *keys)``; ``rng(seed)`` equals
    ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed_sequence(seed, *keys))


def int_seed(seed: int, *keys: Key) -> int:
    """A 32-bit integer seed for ``(seed, *keys)``, for libraries that take one
    (torch, Optuna, scikit-learn)."""
    return int(seed_sequence(seed, *keys).generate_state(1)[0])
