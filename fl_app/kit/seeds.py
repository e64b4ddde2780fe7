"""Every random stream of a run, derived from the seed, a named purpose and ids.

Two streams of different purposes (or ids) are independent, so no stream can collide
with another the way ad-hoc integer mixes do (``[seed, 10]`` for a dataset was client
10's validation split). The same seed, purpose and ids always give the same stream.

    rng_for(seed, "client-val-split", partition_id)   # a numpy Generator
    seed_for(seed, "local-training", round, partition_id)   # an int, for torch and libraries
"""

from __future__ import annotations

import hashlib

import numpy as np


def _sequence(seed: int, purpose: str, ids: tuple[int, ...]) -> np.random.SeedSequence:
    # The purpose enters as a stable 64-bit number (Python's hash() changes per process).
    tag = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")
    return np.random.SeedSequence([seed, tag, *ids])


def rng_for(seed: int, purpose: str, *ids: int) -> np.random.Generator:
    """The numpy generator of ``purpose`` (and ``ids``) under ``seed``."""
    return np.random.default_rng(_sequence(seed, purpose, ids))


def seed_for(seed: int, purpose: str, *ids: int) -> int:
    """A 32-bit seed of ``purpose`` (and ``ids``) under ``seed``, for torch and libraries."""
    return int(_sequence(seed, purpose, ids).generate_state(1)[0])
