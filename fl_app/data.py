"""Datasets, server/client splits and federated partitions. Knows nothing of Flower.

A pooled dataset (``digits``, torchvision, Hugging Face) is split once, by seed, into a
server test set, a server validation set (for server-side quality scoring) and a client
pool; flwr-datasets partitioners split the client pool over the clients. Every process
recomputes the same split from the seed, so no data moves between server and clients.
``synthetic`` is different: each client's data comes from its own generator (FedProx's
Synthetic(α, β)), so any number of clients costs only the clients that are sampled.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fl_app.config import HF_PREFIX, RunConfig, task_of

FloatArray = NDArray[np.float32]
TargetArray = NDArray[Any]  # int64 class labels, or float32 (N, targets) for regression

# Synthetic(α, β) as in Li et al., "Federated Optimization in Heterogeneous Networks".
SYNTHETIC_FEATURES = 60
SYNTHETIC_CLASSES = 10
SYNTHETIC_MAX_SAMPLES = 1000
# Devices whose held-out samples form the server's synthetic test and validation sets.
SYNTHETIC_SERVER_DEVICES = 100


@dataclass(frozen=True)
class ArrayDataset:
    """Features ``x`` (float32, ``(N, *input_shape)``) and targets ``y``.

    ``y`` holds int64 class labels, or float32 ``(N, targets)`` values for regression.
    """

    x: FloatArray
    y: TargetArray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: NDArray[np.int64]) -> ArrayDataset:
        return ArrayDataset(self.x[indices], self.y[indices])

    @staticmethod
    def concat(parts: list[ArrayDataset]) -> ArrayDataset:
        return ArrayDataset(
            np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts])
        )


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know of the data.

    ``num_classes`` is the model's output width: classes, or regression targets.
    """

    input_shape: tuple[int, ...]
    num_classes: int
    task: str = "classification"


@dataclass(frozen=True)
class ServerData:
    test: ArrayDataset
    val: ArrayDataset
    spec: DataSpec


@dataclass(frozen=True)
class ClientData:
    train: ArrayDataset
    val: ArrayDataset


def spec_of(data: ArrayDataset, num_classes: int, task: str = "classification") -> DataSpec:
    return DataSpec(tuple(data.x.shape[1:]), num_classes, task)


# ---- pooled datasets --------------------------------------------------------------


def _digits(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset | None]:
    """scikit-learn's bundled 8×8 digits, read from its file as ``load_digits`` does.

    Importing scikit-learn costs every simulation process about a second; the file is
    all it is needed for.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dataset 'digits' needs scikit-learn installed (it ships the file)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    rows = np.loadtxt(path, delimiter=",")
    x = (rows[:, :-1].reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    return ArrayDataset(x, rows[:, -1].astype(np.int64)), None


_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _torchvision(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset | None]:
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION[cfg.dataset])

    def load(train: bool) -> ArrayDataset:
        try:
            ds = cls(root=cfg.data_dir, train=train, download=cfg.download)
        except RuntimeError as err:
            raise FileNotFoundError(
                f"dataset {cfg.dataset!r} not found under data-dir {cfg.data_dir!r} ({err}); "
                "put the files there or set download=true"
            ) from err
        images = np.asarray(ds.data, dtype=np.float32) / 255.0
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        return ArrayDataset(np.ascontiguousarray(images), np.asarray(ds.targets, dtype=np.int64))

    return load(train=True), load(train=False)


# The two toy problems of the examples this template grew from: 10 tabular features.
TABULAR_FEATURES = 10
TABULAR_SAMPLES = 1200


def _tabular_regression(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset | None]:
    """``y = x·w + 0.5 + ε`` with ``x ~ N(0, I_10)``, ``w ~ N(0, I)``, ``ε ~ N(0, 0.1²)``."""
    rng = np.random.default_rng([cfg.seed, 10])
    x = rng.normal(size=(TABULAR_SAMPLES, TABULAR_FEATURES))
    y = (
        x @ rng.normal(size=(TABULAR_FEATURES, 1))
        + 0.5
        + 0.1 * rng.normal(size=(TABULAR_SAMPLES, 1))
    )
    return ArrayDataset(x.astype(np.float32), y.astype(np.float32)), None


def _tabular_classification(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset | None]:
    """Three classes in 10 features (scikit-learn's ``make_classification``)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=TABULAR_SAMPLES,
        n_features=TABULAR_FEATURES,
        n_informative=6,
        n_redundant=2,
        n_classes=3,
        n_clusters_per_class=1,
        class_sep=1.5,
        random_state=cfg.seed,
    )
    return ArrayDataset(x.astype(np.float32), y.astype(np.int64)), None


POOLED_LOADERS = {
    "tabular-regression": _tabular_regression,
    "tabular-classification": _tabular_classification,
    "digits": _digits,
    "mnist": _torchvision,
    "fashion-mnist": _torchvision,
    "cifar10": _torchvision,
}


@dataclass(frozen=True)
class Pool:
    """A pooled dataset split into server test, server validation and the client pool."""

    test: ArrayDataset
    server_val: ArrayDataset
    clients: ArrayDataset
    num_classes: int
    task: str


# Caches are keyed by the whole (frozen) config: one run keeps one config per process.
@functools.lru_cache(maxsize=2)
def pool(cfg: RunConfig) -> Pool:
    """The pooled dataset of ``cfg``, split by seed (cached per process)."""
    train, test = POOLED_LOADERS[cfg.dataset](cfg)
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    n_test = 0 if test is not None else round(cfg.test_fraction * len(train))
    n_val = round(cfg.server_val_fraction * len(train))
    if test is None:
        test = train.subset(order[:n_test])
    task = task_of(cfg.dataset)
    num_classes = (
        train.y.shape[1] if task == "regression" else int(max(train.y.max(), test.y.max())) + 1
    )
    return Pool(
        test=test,
        server_val=train.subset(order[n_test : n_test + n_val]),
        clients=train.subset(order[n_test + n_val :]),
        num_classes=num_classes,
        task=task,
    )


# ---- partitioning -----------------------------------------------------------------


def make_partitioner(cfg: RunConfig, num_partitions: int, pool_size: int) -> Any:
    """The flwr-datasets partitioner named by ``cfg.partitioner``."""
    from flwr_datasets import partitioner as fp

    if cfg.partitioner == "iid":
        return fp.IidPartitioner(num_partitions=num_partitions)
    if cfg.partitioner == "dirichlet":
        return fp.DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=cfg.dirichlet_alpha,
            # Every client needs a train and a validation example.
            min_partition_size=max(2, min(10, pool_size // (2 * num_partitions))),
            seed=cfg.seed,
        )
    if cfg.partitioner == "shard":
        return fp.ShardPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_shards_per_partition=cfg.shards_per_client,
            seed=cfg.seed,
        )
    return fp.PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=cfg.classes_per_client,
        # Client i gets classes i, i+1, ... (mod C): no class is left out, unlike "random".
        class_assignment_mode="first-deterministic",
        seed=cfg.seed,
    )


@functools.lru_cache(maxsize=2)
def _partitioner(cfg: RunConfig, num_partitions: int) -> Any:
    from datasets import Dataset

    labels = pool(cfg).clients.y
    partitioner = make_partitioner(cfg, num_partitions, len(labels))
    # Partition only labels and row numbers; the features stay in numpy.
    partitioner.dataset = Dataset.from_dict({"label": labels, "row": np.arange(len(labels))})
    return partitioner


def iid_rows(size: int, partition_id: int, num_partitions: int) -> NDArray[np.int64]:
    """flwr-datasets' ``IidPartitioner`` split, without importing flwr-datasets.

    The same contiguous shards (``Dataset.shard(contiguous=True)``: the first
    ``size % num_partitions`` get one row more) of the already shuffled pool. Importing
    flwr-datasets (HF datasets, pandas, seaborn) costs each process one to two seconds:
    every Ray worker, and every message's ClientApp process in a deployment.
    """
    base, extra = divmod(size, num_partitions)
    start = base * partition_id + min(partition_id, extra)
    return np.arange(start, start + base + int(partition_id < extra), dtype=np.int64)


def partition_indices(cfg: RunConfig, partition_id: int, num_partitions: int) -> NDArray[np.int64]:
    """Rows of the client pool that belong to ``partition_id``."""
    if cfg.partitioner == "iid":
        return iid_rows(len(pool(cfg).clients), partition_id, num_partitions)
    partitioner = _partitioner(cfg, num_partitions)
    return np.asarray(partitioner.load_partition(partition_id)["row"], dtype=np.int64)


# ---- synthetic ----------------------------------------------------------------------


def synthetic_device(alpha: float, beta: float, seed: int, device: int) -> ArrayDataset:
    """All samples of device ``device`` under Synthetic(α, β) (deterministic per seed).

    ``u ~ N(0, α)``, ``W, b ~ N(u, 1)``; ``B ~ N(0, β)``, ``v ~ N(B, 1)``;
    ``x ~ N(v, Σ)`` with ``Σ = diag(j^-1.2)``; ``y = argmax(W x + b)``. Sample counts
    follow the paper's power law (lognormal(4, 2) + 50), capped at 1,000.
    """
    rng = np.random.default_rng([seed, device])
    count = min(int(rng.lognormal(4, 2)) + 50, SYNTHETIC_MAX_SAMPLES)
    u = rng.normal(0.0, np.sqrt(alpha))
    big_b = rng.normal(0.0, np.sqrt(beta))
    v = rng.normal(big_b, 1.0, SYNTHETIC_FEATURES)
    weights = rng.normal(u, 1.0, (SYNTHETIC_FEATURES, SYNTHETIC_CLASSES))
    bias = rng.normal(u, 1.0, SYNTHETIC_CLASSES)
    std = np.arange(1, SYNTHETIC_FEATURES + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)
    x = rng.normal(v, std, (count, SYNTHETIC_FEATURES))
    y = np.argmax(x @ weights + bias, axis=1)
    return ArrayDataset(x.astype(np.float32), y.astype(np.int64))


def _synthetic_split(
    cfg: RunConfig, device: int
) -> tuple[ArrayDataset, ArrayDataset, ArrayDataset]:
    """A device's samples as (client part, server test part, server validation part)."""
    data = synthetic_device(cfg.synthetic_alpha, cfg.synthetic_beta, cfg.seed, device)
    n_test = round(cfg.test_fraction * len(data))
    n_val = round(cfg.server_val_fraction * len(data))
    rows = np.arange(len(data))
    return (
        data.subset(rows[n_test + n_val :]),
        data.subset(rows[:n_test]),
        data.subset(rows[n_test : n_test + n_val]),
    )


# ---- what the server and a client load --------------------------------------------


@functools.lru_cache(maxsize=2)
def load_server_data(cfg: RunConfig) -> ServerData:
    """The server's test set (central evaluation) and validation set (quality scoring)."""
    if cfg.dataset == "synthetic":
        parts = [_synthetic_split(cfg, d) for d in range(SYNTHETIC_SERVER_DEVICES)]
        test = ArrayDataset.concat([p[1] for p in parts])
        val = ArrayDataset.concat([p[2] for p in parts])
        return ServerData(test, val, data_spec(cfg))
    if cfg.dataset.startswith(HF_PREFIX):
        return _hf_server_data(cfg)
    pooled = pool(cfg)
    return ServerData(
        pooled.test, pooled.server_val, spec_of(pooled.test, pooled.num_classes, pooled.task)
    )


# A process meets a client again only when a later round samples it again; a small cache
# serves the usual few-client runs and stays a few MB when thousands of clients are sampled.
@functools.lru_cache(maxsize=32)
def load_client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """Client ``partition_id``'s training and local validation data (cached per process)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id {partition_id} is not in [0, num-partitions={num_partitions})"
        )
    if cfg.dataset == "synthetic":
        data = _synthetic_split(cfg, partition_id)[0]
    elif cfg.dataset.startswith(HF_PREFIX):
        data = _hf_partition(cfg, partition_id, num_partitions)
    else:
        data = pool(cfg).clients.subset(partition_indices(cfg, partition_id, num_partitions))
    rows = np.random.default_rng([cfg.seed, partition_id]).permutation(len(data))
    n_val = max(1, round(cfg.val_fraction * len(data))) if len(data) > 1 else 0
    return ClientData(train=data.subset(rows[n_val:]), val=data.subset(rows[:n_val]))


def data_spec(cfg: RunConfig) -> DataSpec:
    """Input shape and class count of ``cfg``'s dataset (the same on server and clients)."""
    if cfg.dataset == "synthetic":
        return DataSpec((SYNTHETIC_FEATURES,), SYNTHETIC_CLASSES)
    return load_server_data(cfg).spec


# ---- Hugging Face (online) ----------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _federated_dataset(cfg: RunConfig, num_partitions: int) -> Any:
    from flwr_datasets import FederatedDataset

    return FederatedDataset(
        dataset=cfg.dataset.removeprefix(HF_PREFIX),
        partitioners={
            "train": make_partitioner(cfg, num_partitions, pool_size=10 * num_partitions)
        },
        seed=cfg.seed,
    )


def _hf_arrays(split: Any) -> ArrayDataset:
    """Image-classification columns of a Hugging Face split as arrays."""
    columns = split.column_names
    label = next((c for c in ("label", "labels", "fine_label") if c in columns), None)
    feature = next((c for c in ("image", "img", "pixel_values") if c in columns), None)
    if label is None or feature is None:
        raise ValueError(f"cannot find image and label columns in {columns}")
    images = np.stack([np.asarray(im, dtype=np.float32) for im in split[feature]]) / 255.0
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return ArrayDataset(np.ascontiguousarray(images), np.asarray(split[label], dtype=np.int64))


def _hf_partition(cfg: RunConfig, partition_id: int, num_partitions: int) -> ArrayDataset:
    return _hf_arrays(_federated_dataset(cfg, num_partitions).load_partition(partition_id, "train"))


def _hf_server_data(cfg: RunConfig) -> ServerData:
    test = _hf_arrays(_federated_dataset(cfg, 1).load_split("test"))
    rows = np.random.default_rng(cfg.seed).permutation(len(test))
    n_val = round(cfg.server_val_fraction * len(test))
    num_classes = int(test.y.max()) + 1
    return ServerData(
        test.subset(rows[n_val:]), test.subset(rows[:n_val]), spec_of(test, num_classes)
    )
