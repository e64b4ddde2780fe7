"""Every random stream of a run, from the seed, a named purpose and ids: different purposes
or ids never collide, and the same ones always give the same stream (``seed_for``: for torch)."""

from __future__ import annotations

import hashlib

import numpy as np


def _sequence(seed: int, purpose: str, ids: tuple[int, ...]) -> np.random.SeedSequence:
    # The purpose enters as a stable 64-bit number (Python's hash() changes per process).
    tag = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")
    return np.random.SeedSequence([seed, tag, *ids])


def rng_for(seed: int, purpose: str, *ids: int) -> np.random.Generator:
    return np.random.default_rng(_sequence(seed, purpose, ids))


def seed_for(seed: int, purpose: str, *ids: int) -> int:
    return int(_sequence(seed, purpose, ids).generate_state(1)[0])
