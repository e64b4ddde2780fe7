"""Datasets, server/client splits and federated partitions. Knows nothing of Flower.

``DATASETS`` and ``PARTITIONERS`` are the registries (the config reads its choices from
them). A pooled dataset (``digits``, torchvision, the tabular ones, Hugging Face) is split
once, by seed, into a server test set, a server validation set (for server-side quality
scoring) and a client pool; a partitioner splits the client pool over the clients. Every
process recomputes the same split from the seed, so no data moves between server and
clients. A generated dataset (``synthetic``) is different: each client's data comes from
its own generator (FedProx's Synthetic(α, β)), so any number of clients costs only the
clients that are sampled.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from fl_app.kit.seeds import rng_for, seed_for

if TYPE_CHECKING:
    from fl_app.kit.config import RunConfig

FloatArray = NDArray[np.float32]
TargetArray = NDArray[Any]  # int64 class labels, or float32 (N, targets) for regression


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


# ---- loaders of pooled datasets: cfg -> (train, test or None) ---------------------------

Loader = Callable[["RunConfig"], tuple[ArrayDataset, ArrayDataset | None]]


def images_of(pixels: Any) -> FloatArray:
    """8-bit images, ``(N, H, W)`` or ``(N, H, W, C)``, as float32 ``(N, C, H, W)`` in [0, 1]."""
    images = np.asarray(pixels, dtype=np.float32) / 255.0
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images)


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


def _torchvision(class_name: str) -> Loader:
    """A loader of torchvision's ``class_name`` dataset from ``data-dir``."""

    def load_both(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset | None]:
        import torchvision

        cls = getattr(torchvision.datasets, class_name)

        def load(train: bool) -> ArrayDataset:
            try:
                ds = cls(root=cfg.data_dir, train=train, download=cfg.download)
            except RuntimeError as err:
                raise FileNotFoundError(
                    f"dataset {cfg.dataset!r} not found under data-dir {cfg.data_dir!r} "
                    f"({err}); put the files there or set download=true"
                ) from err
            return ArrayDataset(images_of(ds.data), np.asarray(ds.targets, dtype=np.int64))

        return load(train=True), load(train=False)

    return load_both


# The two toy problems of the examples this template grew from: 10 tabular features.
TABULAR_FEATURES = 10
TABULAR_SAMPLES = 1200


def _tabular_regression(cfg: RunConfig) -> tuple[ArrayDataset, ArrayDataset | None]:
    """``y = x·w + 0.5 + ε`` with ``x ~ N(0, I_10)``, ``w ~ N(0, I)``, ``ε ~ N(0, 0.1²)``."""
    rng = rng_for(cfg.seed, "tabular-regression")
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
        random_state=seed_for(cfg.seed, "tabular-classification"),
    )
    return ArrayDataset(x.astype(np.float32), y.astype(np.int64)), None


# ---- partitioners ---------------------------------------------------------------------


@dataclass(frozen=True)
class Partitioning:
    """A flwr-datasets partitioner (``flwr_datasets.partitioner.<name>``) and its arguments
    besides ``num_partitions``, from (cfg, number of partitions, pool size)."""

    name: str
    arguments: Callable[[RunConfig, int, int], dict[str, Any]]


# name -> partitioner. "iid" is computed without flwr-datasets (see iid_rows); its
# partitioner serves Hugging Face data.
PARTITIONERS: dict[str, Partitioning] = {
    "iid": Partitioning("IidPartitioner", lambda cfg, n, size: {}),
    "dirichlet": Partitioning(
        "DirichletPartitioner",
        lambda cfg, n, size: {
            "partition_by": "label",
            "alpha": cfg.dirichlet_alpha,
            # Every client needs a train and a validation example.
            "min_partition_size": max(2, min(10, size // (2 * n))),
            "seed": seed_for(cfg.seed, "partitioner"),
        },
    ),
    "shard": Partitioning(
        "ShardPartitioner",
        lambda cfg, n, size: {
            "partition_by": "label",
            "num_shards_per_partition": cfg.shards_per_client,
            "seed": seed_for(cfg.seed, "partitioner"),
        },
    ),
    "pathological": Partitioning(
        "PathologicalPartitioner",
        lambda cfg, n, size: {
            "partition_by": "label",
            "num_classes_per_partition": cfg.classes_per_client,
            # Client i gets classes i, i+1, ... (mod C): no class is left out, unlike "random".
            "class_assignment_mode": "first-deterministic",
            "seed": seed_for(cfg.seed, "partitioner"),
        },
    ),
}


def make_partitioner(cfg: RunConfig, num_partitions: int, pool_size: int) -> Any:
    """The flwr-datasets partitioner named by ``cfg.partitioner``."""
    from flwr_datasets import partitioner

    chosen = PARTITIONERS[cfg.partitioner]
    arguments = chosen.arguments(cfg, num_partitions, pool_size)
    return getattr(partitioner, chosen.name)(num_partitions=num_partitions, **arguments)


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


# ---- the datasets -------------------------------------------------------------------


class Dataset:
    """A dataset the config can name: how the server and each client get their data.

    ``features``: ``images`` (``(C, H, W)``) or ``vectors`` (``(F,)``); image models refuse
    vectors. ``task``: ``classification`` or ``regression`` (the loss and the metrics).
    ``partitioned``: whether ``partitioner`` splits it (False for generated data, where
    each client's data is its own, so only ``iid`` applies).
    """

    features = "images"
    task = "classification"
    partitioned = True

    def server_data(self, cfg: RunConfig) -> ServerData:
        """The server's test set (central evaluation) and validation set (quality scoring)."""
        raise NotImplementedError

    def client_data(self, cfg: RunConfig, partition_id: int, num_partitions: int) -> ArrayDataset:
        """All of client ``partition_id``'s data (its local validation split is taken later)."""
        raise NotImplementedError

    def spec(self, cfg: RunConfig) -> DataSpec:
        """Input shape and class count (the same on server and clients)."""
        return load_server_data(cfg).spec


@dataclass(frozen=True)
class Pooled(Dataset):
    """A dataset loaded whole, split by seed into server test, server validation and the
    client pool, which ``partitioner`` splits over the clients."""

    load: Loader
    features: str = "images"
    task: str = "classification"

    def server_data(self, cfg: RunConfig) -> ServerData:
        pooled = pool(cfg)
        return ServerData(
            pooled.test, pooled.server_val, spec_of(pooled.test, pooled.num_classes, self.task)
        )

    def client_data(self, cfg: RunConfig, partition_id: int, num_partitions: int) -> ArrayDataset:
        return pool(cfg).clients.subset(partition_indices(cfg, partition_id, num_partitions))


@dataclass(frozen=True)
class Pool:
    """A pooled dataset split into server test, server validation and the client pool."""

    test: ArrayDataset
    server_val: ArrayDataset
    clients: ArrayDataset
    num_classes: int


# Caches are keyed by the whole (frozen) config: one run keeps one config per process.
@functools.lru_cache(maxsize=2)
def pool(cfg: RunConfig) -> Pool:
    """The pooled dataset of ``cfg``, split by seed (cached per process)."""
    dataset = dataset_of(cfg.dataset)
    if not isinstance(dataset, Pooled):
        raise TypeError(f"dataset {cfg.dataset!r} has no pooled form")
    train, test = dataset.load(cfg)
    order = rng_for(cfg.seed, "server-split").permutation(len(train))
    n_test = 0 if test is not None else round(cfg.test_fraction * len(train))
    n_val = round(cfg.server_val_fraction * len(train))
    if test is None:
        test = train.subset(order[:n_test])
    num_classes = (
        train.y.shape[1]
        if dataset.task == "regression"
        else int(max(train.y.max(), test.y.max())) + 1
    )
    return Pool(
        test=test,
        server_val=train.subset(order[n_test : n_test + n_val]),
        clients=train.subset(order[n_test + n_val :]),
        num_classes=num_classes,
    )


@functools.lru_cache(maxsize=2)
def _partitioner(cfg: RunConfig, num_partitions: int) -> Any:
    from datasets import Dataset as HFDataset

    labels = pool(cfg).clients.y
    partitioner = make_partitioner(cfg, num_partitions, len(labels))
    # Partition only labels and row numbers; the features stay in numpy.
    partitioner.dataset = HFDataset.from_dict({"label": labels, "row": np.arange(len(labels))})
    return partitioner


def partition_indices(cfg: RunConfig, partition_id: int, num_partitions: int) -> NDArray[np.int64]:
    """Rows of the client pool that belong to ``partition_id``."""
    if cfg.partitioner == "iid":
        return iid_rows(len(pool(cfg).clients), partition_id, num_partitions)
    partitioner = _partitioner(cfg, num_partitions)
    return np.asarray(partitioner.load_partition(partition_id)["row"], dtype=np.int64)


# Synthetic(α, β) as in Li et al., "Federated Optimization in Heterogeneous Networks".
SYNTHETIC_FEATURES = 60
SYNTHETIC_CLASSES = 10
SYNTHETIC_MAX_SAMPLES = 1000
# Devices whose held-out samples form the server's synthetic test and validation sets.
SYNTHETIC_SERVER_DEVICES = 100


def synthetic_device(alpha: float, beta: float, seed: int, device: int) -> ArrayDataset:
    """All samples of device ``device`` under Synthetic(α, β) (deterministic per seed).

    ``u ~ N(0, α)``, ``W, b ~ N(u, 1)``; ``B ~ N(0, β)``, ``v ~ N(B, 1)``;
    ``x ~ N(v, Σ)`` with ``Σ = diag(j^-1.2)``; ``y = argmax(W x + b)``. Sample counts
    follow the paper's power law (lognormal(4, 2) + 50), capped at 1,000.
    """
    rng = rng_for(seed, "synthetic-device", device)
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


class Synthetic(Dataset):
    """FedProx's Synthetic(α, β): every device (client) has its own generator.

    Each device's samples are split into its client part and, by ``test-fraction`` and
    ``server-val-fraction``, a server part; the server's sets are those of the first
    ``SYNTHETIC_SERVER_DEVICES`` devices.
    """

    features = "vectors"
    partitioned = False

    def _split(self, cfg: RunConfig, device: int) -> tuple[ArrayDataset, ...]:
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

    def server_data(self, cfg: RunConfig) -> ServerData:
        parts = [self._split(cfg, d) for d in range(SYNTHETIC_SERVER_DEVICES)]
        test = ArrayDataset.concat([p[1] for p in parts])
        val = ArrayDataset.concat([p[2] for p in parts])
        return ServerData(test, val, self.spec(cfg))

    def client_data(self, cfg: RunConfig, partition_id: int, num_partitions: int) -> ArrayDataset:
        return self._split(cfg, partition_id)[0]

    def spec(self, cfg: RunConfig) -> DataSpec:
        return DataSpec((SYNTHETIC_FEATURES,), SYNTHETIC_CLASSES)


HF_PREFIX = "hf:"


@dataclass(frozen=True)
class HuggingFace(Dataset):
    """An image-classification dataset of the Hugging Face hub (``hf:<name>``, online)."""

    name: str

    def server_data(self, cfg: RunConfig) -> ServerData:
        test = _hf_arrays(_federated_dataset(cfg, 1).load_split("test"))
        rows = rng_for(cfg.seed, "server-split").permutation(len(test))
        n_val = round(cfg.server_val_fraction * len(test))
        num_classes = int(test.y.max()) + 1
        return ServerData(
            test.subset(rows[n_val:]), test.subset(rows[:n_val]), spec_of(test, num_classes)
        )

    def client_data(self, cfg: RunConfig, partition_id: int, num_partitions: int) -> ArrayDataset:
        partition = _federated_dataset(cfg, num_partitions).load_partition(partition_id, "train")
        return _hf_arrays(partition)


@functools.lru_cache(maxsize=2)
def _federated_dataset(cfg: RunConfig, num_partitions: int) -> Any:
    from flwr_datasets import FederatedDataset

    return FederatedDataset(
        dataset=cfg.dataset.removeprefix(HF_PREFIX),
        partitioners={
            "train": make_partitioner(cfg, num_partitions, pool_size=10 * num_partitions)
        },
        seed=seed_for(cfg.seed, "partitioner"),
    )


def _hf_arrays(split: Any) -> ArrayDataset:
    """Image-classification columns of a Hugging Face split as arrays."""
    columns = split.column_names
    label = next((c for c in ("label", "labels", "fine_label") if c in columns), None)
    feature = next((c for c in ("image", "img", "pixel_values") if c in columns), None)
    if label is None or feature is None:
        raise ValueError(f"cannot find image and label columns in {columns}")
    pixels = np.stack([np.asarray(image) for image in split[feature]])
    return ArrayDataset(images_of(pixels), np.asarray(split[label], dtype=np.int64))


# name -> dataset. Add a dataset: one entry here (a Pooled loader, or a Dataset subclass).
DATASETS: dict[str, Dataset] = {
    "digits": Pooled(_digits),
    "mnist": Pooled(_torchvision("MNIST")),
    "fashion-mnist": Pooled(_torchvision("FashionMNIST")),
    "cifar10": Pooled(_torchvision("CIFAR10")),
    "synthetic": Synthetic(),
    "tabular-classification": Pooled(_tabular_classification, features="vectors"),
    "tabular-regression": Pooled(_tabular_regression, features="vectors", task="regression"),
}


def dataset_of(name: str) -> Dataset:
    """The dataset the config names: a ``DATASETS`` entry, or ``hf:<name>``."""
    if name.startswith(HF_PREFIX) and len(name) > len(HF_PREFIX):
        return HuggingFace(name.removeprefix(HF_PREFIX))
    return DATASETS[name]


def task_of(name: str) -> str:
    """``regression`` or ``classification``: what the loss and the metrics are."""
    return dataset_of(name).task


# ---- what the server and a client load --------------------------------------------


@functools.lru_cache(maxsize=2)
def load_server_data(cfg: RunConfig) -> ServerData:
    """The server's test set (central evaluation) and validation set (quality scoring)."""
    return dataset_of(cfg.dataset).server_data(cfg)


# A process meets a client again only when a later round samples it again; a small cache
# serves the usual few-client runs and stays a few MB when thousands of clients are sampled.
@functools.lru_cache(maxsize=32)
def load_client_data(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientData:
    """Client ``partition_id``'s training and local validation data (cached per process)."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition-id {partition_id} is not in [0, num-partitions={num_partitions})"
        )
    data = dataset_of(cfg.dataset).client_data(cfg, partition_id, num_partitions)
    rows = rng_for(cfg.seed, "client-val-split", partition_id).permutation(len(data))
    n_val = max(1, round(cfg.val_fraction * len(data))) if len(data) > 1 else 0
    return ClientData(train=data.subset(rows[n_val:]), val=data.subset(rows[:n_val]))


def data_spec(cfg: RunConfig) -> DataSpec:
    """Input shape and class count of ``cfg``'s dataset (the same on server and clients)."""
    return dataset_of(cfg.dataset).spec(cfg)
