"""The data of the server and each client: a pooled dataset split by seed into the server's test
and validation sets and a pool the partitioner splits over clients, alike in every process."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fl_app.kit.keys import fail
from fl_app.kit.seeds import rng_for, seed_for
from fl_app.task import ArrayDataset, DataSpec, Pooled, ServerData, dataset_of

Settings = Any  # the run config: its dataset, partitioner, *-fraction, dirichlet-alpha, seed


@dataclass(frozen=True)
class ClientData:
    train: ArrayDataset
    val: ArrayDataset  # the client's own validation split (its quality signal)


@dataclass(frozen=True)
class Pool:
    test: ArrayDataset
    server_val: ArrayDataset
    clients: ArrayDataset
    num_classes: int


# Caches are keyed by the whole (frozen) config: one run keeps one config per process.
@functools.lru_cache(maxsize=2)
def pool(cfg: Settings) -> Pool:
    dataset = dataset_of(cfg.dataset)
    if not isinstance(dataset, Pooled):
        raise TypeError(f"dataset {cfg.dataset!r} has no pooled form")
    train, test = dataset.load(cfg)
    order = rng_for(cfg.seed, "server-split").permutation(len(train))
    n_test = 0 if test is not None else round(cfg.test_fraction * len(train))
    test = train.subset(order[:n_test]) if test is None else test
    split = n_test + round(cfg.server_val_fraction * len(train))  # server validation before it
    regression = dataset.task == "regression"
    num_classes = train.y.shape[1] if regression else int(max(train.y.max(), test.y.max())) + 1
    return Pool(test, train.subset(order[n_test:split]), train.subset(order[split:]), num_classes)


@dataclass(frozen=True)
class Partitioning:
    """A partitioner of ``flwr_datasets.partitioner`` and its arguments but num_partitions."""

    name: str
    arguments: Callable[[Any, int, int], dict[str, Any]]  # of cfg, num_partitions, pool size


# name -> partitioner. "iid" is computed here (iid_rows); flwr-datasets does the others.
PARTITIONERS: dict[str, Partitioning] = {
    "iid": Partitioning("IidPartitioner", lambda cfg, n, size: {}),
    "dirichlet": Partitioning(
        "DirichletPartitioner",
        lambda cfg, n, size: {
            "partition_by": "label",
            "alpha": cfg.dirichlet_alpha,
            "min_partition_size": max(2, min(10, size // (2 * n))),  # a train and a val example
            "seed": seed_for(cfg.seed, "partitioner"),
        },
    ),
}


def make_partitioner(cfg: Settings, num_partitions: int, pool_size: int) -> Any:
    from flwr_datasets import partitioner

    chosen = PARTITIONERS[cfg.partitioner]
    arguments = chosen.arguments(cfg, num_partitions, pool_size)
    return getattr(partitioner, chosen.name)(num_partitions=num_partitions, **arguments)


def iid_rows(size: int, partition_id: int, num_partitions: int) -> NDArray[np.int64]:
    """flwr-datasets' ``IidPartitioner`` rows, without importing it (a second or two a process)."""
    base, extra = divmod(size, num_partitions)
    start = base * partition_id + min(partition_id, extra)
    return np.arange(start, start + base + int(partition_id < extra), dtype=np.int64)


@functools.lru_cache(maxsize=2)
def _partitioner(cfg: Settings, num_partitions: int) -> Any:
    from datasets import Dataset

    labels = pool(cfg).clients.y
    partitioner = make_partitioner(cfg, num_partitions, len(labels))
    # Partition only labels and row numbers; the features stay in numpy.
    partitioner.dataset = Dataset.from_dict({"label": labels, "row": np.arange(len(labels))})
    return partitioner


def partition_indices(cfg: Settings, partition_id: int, num_partitions: int) -> NDArray[np.int64]:
    """Rows of the client pool that belong to ``partition_id``."""
    if cfg.partitioner == "iid":
        return iid_rows(len(pool(cfg).clients), partition_id, num_partitions)
    with warnings.catch_warnings(action="ignore"):  # flwr-datasets' retries, each a warning
        rows = _partitioner(cfg, num_partitions).load_partition(partition_id)["row"]
    return np.asarray(rows, dtype=np.int64)


def check_split(cfg: Settings) -> None:
    """Refuse in one line a split of a pooled dataset that leaves a client fewer than two
    examples (one to train, one to validate), or that its partitioner cannot make."""
    if not isinstance(dataset_of(cfg.dataset), Pooled):
        return
    size, clients = len(pool(cfg).clients), cfg.num_clients
    wanted = f"at most {size // 2} with dataset {cfg.dataset!r} ({size} client examples, 2 each)"
    if size < 2 * clients:
        fail("num-clients", clients, wanted)
    try:
        partition_indices(cfg, 0, clients)  # the partitioner splits them all at once
    except ValueError as err:
        fail("num-clients", clients, f"a number {cfg.partitioner} can split into: {err}")


@functools.lru_cache(maxsize=2)
def load_server_data(cfg: Settings) -> ServerData:
    """The server's test set (central evaluation) and validation set (quality scoring)."""
    dataset = dataset_of(cfg.dataset)
    if not isinstance(dataset, Pooled):
        return dataset.server_data(cfg)
    pooled = pool(cfg)
    spec = DataSpec(tuple(pooled.test.x.shape[1:]), pooled.num_classes, dataset.task)
    return ServerData(pooled.test, pooled.server_val, spec)


# A process meets a client again only when a later round samples it again; a small cache
# serves the usual few-client runs and stays a few MB when thousands of clients are sampled.
@functools.lru_cache(maxsize=32)
def load_client_data(cfg: Settings, partition_id: int, num_partitions: int) -> ClientData:
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} not in [0, num-partitions={num_partitions})")
    dataset = dataset_of(cfg.dataset)
    if isinstance(dataset, Pooled):
        data = pool(cfg).clients.subset(partition_indices(cfg, partition_id, num_partitions))
    else:
        data = dataset.client_data(cfg, partition_id, num_partitions)
    rows = rng_for(cfg.seed, "client-val-split", partition_id).permutation(len(data))
    n_val = max(1, round(cfg.val_fraction * len(data))) if len(data) > 1 else 0
    return ClientData(train=data.subset(rows[n_val:]), val=data.subset(rows[:n_val]))


def data_spec(cfg: Settings) -> DataSpec:
    """Input shape and class count of the dataset (the same on server and clients)."""
    dataset = dataset_of(cfg.dataset)
    return load_server_data(cfg).spec if isinstance(dataset, Pooled) else dataset.spec(cfg)


def task_of(name: str) -> str:  # regression or classification: what the loss and metrics are
    return dataset_of(name).task
