"""Named random streams: deterministic, independent per purpose and ids."""

from __future__ import annotations

import numpy as np

from fl_app.kit.seeds import rng_for, seed_for


def test_the_same_seed_purpose_and_ids_give_the_same_stream() -> None:
    first = rng_for(42, "client-val-split", 3).permutation(100)
    np.testing.assert_array_equal(first, rng_for(42, "client-val-split", 3).permutation(100))
    assert seed_for(42, "local-training", 2, 3) == seed_for(42, "local-training", 2, 3)


def test_purposes_ids_and_seeds_each_change_the_stream() -> None:
    base = rng_for(42, "client-val-split", 10).random(8)
    for other in (
        rng_for(43, "client-val-split", 10),
        rng_for(42, "client-val-split", 11),
        # The collision named seeds remove: a dataset's [seed, 10] was client 10's split.
        rng_for(42, "tabular-regression"),
        rng_for(42, "local-training", 10),
    ):
        assert not np.array_equal(other.random(8), base)
    # Training seeds of neighbouring rounds and clients do not repeat (the old
    # seed·1000003 + round·10007 + id mix repeated them across seeds).
    seeds = {
        seed_for(s, "local-training", r, c) for s in range(3) for r in range(50) for c in range(50)
    }
    assert len(seeds) == 3 * 50 * 50


def test_seeds_fit_every_consumer() -> None:
    # torch.manual_seed, scikit-learn's random_state and flwr-datasets take 32-bit seeds.
    assert all(0 <= seed_for(s, "model-init") < 2**32 for s in range(100))
