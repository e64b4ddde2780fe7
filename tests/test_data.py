"""Datasets, the server/client split and the partitioners."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from fl_app.kit import data as fl_data
from fl_app.kit.config import RunConfig
from fl_app.kit.data import iid_rows, load_client_data, load_server_data, partition_indices, pool
from fl_app.kit.seeds import rng_for
from fl_app.task import DATASETS, ArrayDataset

NUM_PARTITIONS = 10
# The tests of the embedded dataset's loading and splits; an app that removed it skips them.
DIGITS = RunConfig(dataset="digits", partitioner="iid")
needs_digits = pytest.mark.skipif("digits" not in DATASETS, reason="no dataset 'digits' here")
PARTITIONERS = tuple(fl_data.PARTITIONERS)
CACHED = tuple(
    getattr(fl_data, n) for n in ("pool", "_partitioner", "load_server_data", "load_client_data")
)


def clear_caches() -> None:
    for cached in CACHED:
        cached.cache_clear()


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    clear_caches()
    with warnings.catch_warnings():
        # flwr-datasets warns when a pathological split leaves classes unused.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield
    clear_caches()


def rows(data: ArrayDataset) -> Counter[tuple[bytes, int]]:
    """Row identity: the bytes of each example with its label (a multiset)."""
    return Counter((x.tobytes(), int(y)) for x, y in zip(data.x, data.y, strict=True))


def label_hist(y: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(y, minlength=num_classes) / max(len(y), 1)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def all_digits() -> ArrayDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    return ArrayDataset(x, digits.target.astype(np.int64))


@needs_digits
def test_a_client_of_digits_on_iid_partitions_imports_neither_scikit_learn_nor_flwr_datasets() -> (
    None
):
    # Each import costs every simulation worker (and every deployment message) a second.
    code = (
        "import sys; from fl_app.kit.config import RunConfig; from fl_app.kit.data import "
        "load_client_data; load_client_data(RunConfig(dataset='digits', partitioner='iid'), "
        "3, 10); "
        "print(sorted({'sklearn', 'flwr_datasets', 'datasets'} & set(sys.modules)))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert imported.strip() == "[]"


@needs_digits
def test_digits_are_scikit_learns_exactly() -> None:
    data = pool(DIGITS)
    full = all_digits()
    got = ArrayDataset.concat([data.test, data.server_val, data.clients])
    order = rng_for(DIGITS.seed, "server-split").permutation(len(full))
    np.testing.assert_array_equal(got.x, full.x[order])
    np.testing.assert_array_equal(got.y, full.y[order])
    assert got.x.dtype == np.float32
    assert got.y.dtype == np.int64


@pytest.mark.parametrize(("size", "num_partitions"), [(1258, 10), (1258, 100), (7, 3), (5, 5)])
def test_iid_rows_are_flwr_datasets_iid_partitions(size: int, num_partitions: int) -> None:
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    partitioner = IidPartitioner(num_partitions=num_partitions)
    partitioner.dataset = Dataset.from_dict({"row": np.arange(size)})
    for partition_id in range(num_partitions):
        want = np.asarray(partitioner.load_partition(partition_id)["row"])
        np.testing.assert_array_equal(iid_rows(size, partition_id, num_partitions), want)


def partitions(cfg: RunConfig, n: int = NUM_PARTITIONS) -> list[np.ndarray]:
    return [partition_indices(cfg, i, n) for i in range(n)]


# ---- server split -----------------------------------------------------------------


@needs_digits
@pytest.mark.parametrize(("test_fraction", "val_fraction"), [(0.2, 0.1), (0.3, 0.05)])
def test_server_test_val_and_client_pool_split_the_data(
    test_fraction: float, val_fraction: float
) -> None:
    cfg = dataclasses.replace(DIGITS, test_fraction=test_fraction, server_val_fraction=val_fraction)
    full = all_digits()
    pooled = pool(cfg)
    n = len(full)
    assert len(pooled.test) == round(test_fraction * n)
    assert len(pooled.server_val) == round(val_fraction * n)
    assert len(pooled.test) + len(pooled.server_val) + len(pooled.clients) == n
    # Disjoint and complete: the three multisets of rows add up to the whole dataset.
    assert rows(pooled.test) + rows(pooled.server_val) + rows(pooled.clients) == rows(full)
    assert not set(rows(pooled.test)) & set(rows(pooled.clients))
    assert not set(rows(pooled.server_val)) & set(rows(pooled.clients))
    assert not set(rows(pooled.test)) & set(rows(pooled.server_val))
    assert pooled.num_classes == 10


@needs_digits
def test_server_data_is_the_pool_test_and_val() -> None:
    cfg = DIGITS
    server = load_server_data(cfg)
    pooled = pool(cfg)
    assert rows(server.test) == rows(pooled.test)
    assert rows(server.val) == rows(pooled.server_val)
    assert server.spec.input_shape == (1, 8, 8)
    assert server.spec.num_classes == 10
    assert server.test.x.dtype == np.float32
    assert server.test.y.dtype == np.int64
    assert server.test.x.min() >= 0.0
    assert server.test.x.max() <= 1.0


def test_split_depends_on_the_seed() -> None:
    a = pool(RunConfig(seed=1))
    b = pool(RunConfig(seed=2))
    assert rows(a.test) != rows(b.test)
    assert len(a.test) == len(b.test)


# ---- partitioners -----------------------------------------------------------------


@pytest.mark.parametrize("partitioner", PARTITIONERS)
def test_partitions_are_disjoint_and_cover_the_pool(partitioner: str) -> None:
    cfg = RunConfig(partitioner=partitioner)
    parts = partitions(cfg)
    every = np.concatenate(parts)
    pool_size = len(pool(cfg).clients)
    assert len(np.unique(every)) == len(every), "a row is in two partitions"
    assert every.min() >= 0
    assert every.max() < pool_size
    assert all(len(p) > 0 for p in parts)
    sizes = [
        len(load_client_data(cfg, i, NUM_PARTITIONS).train)
        + len(load_client_data(cfg, i, NUM_PARTITIONS).val)
        for i in range(NUM_PARTITIONS)
    ]
    assert sizes == [len(p) for p in parts]
    if partitioner in ("iid", "dirichlet"):
        assert sum(sizes) == pool_size
    else:  # a partitioner of an optional part may leave a remainder out
        assert sum(sizes) <= pool_size


@pytest.mark.parametrize("partitioner", PARTITIONERS)
def test_client_data_is_its_partition_split_into_train_and_val(partitioner: str) -> None:
    cfg = RunConfig(partitioner=partitioner)
    clients = pool(cfg).clients
    seen: Counter[tuple[bytes, int]] = Counter()
    for i in range(NUM_PARTITIONS):
        data = load_client_data(cfg, i, NUM_PARTITIONS)
        expected = rows(clients.subset(partition_indices(cfg, i, NUM_PARTITIONS)))
        assert rows(data.train) + rows(data.val) == expected
        assert not set(rows(data.train)) & set(rows(data.val))
        total = len(data.train) + len(data.val)
        assert len(data.val) >= 1
        assert abs(len(data.val) - cfg.val_fraction * total) <= 1
        seen += expected
    assert all(count == 1 for count in seen.values())


@pytest.mark.parametrize("val_fraction", [0.1, 0.25, 0.5])
def test_local_val_split_follows_val_fraction(val_fraction: float) -> None:
    cfg = RunConfig(val_fraction=val_fraction)
    for i in range(5):
        data = load_client_data(cfg, i, 5)
        total = len(data.train) + len(data.val)
        assert abs(len(data.val) - val_fraction * total) <= 1


@pytest.mark.parametrize("partitioner", PARTITIONERS)
def test_partitions_are_deterministic_for_a_seed(partitioner: str) -> None:
    cfg = RunConfig(partitioner=partitioner, seed=7)
    first = partitions(cfg)
    first_train = rows(load_client_data(cfg, 3, NUM_PARTITIONS).train)
    clear_caches()
    second = partitions(RunConfig(partitioner=partitioner, seed=7))
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert rows(load_client_data(cfg, 3, NUM_PARTITIONS).train) == first_train


@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_partitions_change_with_the_seed(partitioner: str) -> None:
    a = RunConfig(partitioner=partitioner, seed=1)
    b = RunConfig(partitioner=partitioner, seed=2)
    rows_a = [rows(load_client_data(a, i, NUM_PARTITIONS).train) for i in range(3)]
    rows_b = [rows(load_client_data(b, i, NUM_PARTITIONS).train) for i in range(3)]
    assert rows_a != rows_b
    if partitioner == "dirichlet":
        sizes_a = [len(p) for p in partitions(a)]
        sizes_b = [len(p) for p in partitions(b)]
        assert sizes_a != sizes_b


def mean_label_skew(cfg: RunConfig) -> float:
    """Mean total-variation distance of each client's label histogram to the pool's."""
    pooled = pool(cfg)
    overall = label_hist(pooled.clients.y, pooled.num_classes)
    return float(
        np.mean(
            [
                total_variation(label_hist(pooled.clients.y[p], pooled.num_classes), overall)
                for p in partitions(cfg)
            ]
        )
    )


@needs_digits
def test_dirichlet_with_small_alpha_skews_labels_more_than_iid() -> None:
    iid = mean_label_skew(DIGITS)
    skewed = mean_label_skew(
        dataclasses.replace(DIGITS, partitioner="dirichlet", dirichlet_alpha=0.1)
    )
    mild = mean_label_skew(
        dataclasses.replace(DIGITS, partitioner="dirichlet", dirichlet_alpha=100.0)
    )
    assert skewed > 2 * iid
    assert skewed - iid > 0.2
    assert skewed > mild


def test_load_client_data_is_cached() -> None:
    cfg = RunConfig()
    first = load_client_data(cfg, 2, NUM_PARTITIONS)
    assert load_client_data(cfg, 2, NUM_PARTITIONS) is first
    # An equal config (a new object) hits the same entry.
    assert load_client_data(dataclasses.replace(cfg), 2, NUM_PARTITIONS) is first
    assert load_client_data.cache_info().hits >= 2


@pytest.mark.parametrize(("partition_id", "num_partitions"), [(-1, 10), (10, 10), (5, 5), (0, 0)])
def test_partition_id_out_of_range_is_refused(partition_id: int, num_partitions: int) -> None:
    with pytest.raises(ValueError, match="partition-id"):
        load_client_data(RunConfig(), partition_id, num_partitions)
