"""More datasets, models and partitioners: the optional part ``zoo``.

torchvision's MNIST, Fashion-MNIST and CIFAR-10 (read from ``data-dir``), two generated
tabular problems, FedProx's Synthetic(α, β) (each client's data from its own generator),
any image-classification dataset of the Hugging Face hub (``hf:<name>``, online); the
``linear`` model and McMahan et al.'s CNNs; the ``shard`` and ``pathological``
partitioners. Importing this module adds them to the task's registries
(``fl_app.task.DATASETS``, ``MODELS``, ``fl_app.kit.data.PARTITIONERS``); the config
imports it, on its registration line. Knows nothing of Flower.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

import strategies
from fl_app import task
from fl_app.kit.data import PARTITIONERS, Partitioning, load_server_data, make_partitioner
from fl_app.kit.keys import ConfigError, fail, keys, option
from fl_app.kit.seeds import rng_for, seed_for
from fl_app.task import Architecture, ArrayDataset, Dataset, DataSpec, Pooled, ServerData
from strategies import quality_weighted as quality

Loaded = tuple[ArrayDataset, ArrayDataset | None]


@keys
class ZooKeys:
    """The config keys of the part's datasets and partitioners."""

    data_dir: str = option("root folder of torchvision datasets")
    download: bool = option("let torchvision download the dataset into data-dir")
    shards_per_client: int = option("shards per client for the shard partitioner", at_least=1)
    classes_per_client: int = option(
        "classes per client for the pathological partitioner", at_least=1
    )
    synthetic_alpha: float = option("Synthetic(α, β): model heterogeneity α", at_least=0)
    synthetic_beta: float = option("Synthetic(α, β): data heterogeneity β", at_least=0)

    def check(self) -> None:
        """The rules across keys for the part's kinds of data: vectors, generated, regression."""
        super().check()  # type: ignore[misc]
        cfg: Any = self  # the whole RunConfig
        dataset = task.dataset_of(cfg.dataset)
        with_dataset = f"with dataset {cfg.dataset!r}"
        if dataset.features != "images" and task.MODELS[cfg.model].images_only:
            vectors = ", ".join(name for name, m in task.MODELS.items() if not m.images_only)
            wanted = f"one of {vectors} {with_dataset} ({dataset.features}, not images)"
            fail("model", cfg.model, wanted)
        if not dataset.partitioned and cfg.partitioner != "iid":
            wanted = f"iid {with_dataset} (each client's data comes from its own generator)"
            fail("partitioner", cfg.partitioner, wanted)
        regression = dataset.task == "regression"
        if regression and cfg.partitioner != "iid":
            wanted = f"iid with regression dataset {cfg.dataset!r} (the others split by class)"
            fail("partitioner", cfg.partitioner, wanted)
        uses_quality = issubclass(strategies.rule_type(cfg.strategy), quality.QualityWeightedRule)
        if regression and uses_quality and "accuracy" in cfg.quality_metric:
            wanted = "a loss (e.g. val_loss) for a regression dataset"
            fail("quality-metric", cfg.quality_metric, wanted)


def images_of(pixels: Any) -> NDArray[np.float32]:
    """8-bit images, ``(N, H, W)`` or ``(N, H, W, C)``, as float32 ``(N, C, H, W)`` in [0, 1]."""
    images = np.asarray(pixels, dtype=np.float32) / 255.0
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images)


def _torchvision(class_name: str) -> Any:
    """A loader of torchvision's ``class_name`` dataset from ``data-dir``."""

    def load_both(cfg: Any) -> tuple[ArrayDataset, ArrayDataset | None]:
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


def _tabular_regression(cfg: Any) -> tuple[ArrayDataset, ArrayDataset | None]:
    """``y = x·w + 0.5 + ε`` with ``x ~ N(0, I_10)``, ``w ~ N(0, I)``, ``ε ~ N(0, 0.1²)``."""
    rng = rng_for(cfg.seed, "tabular-regression")
    x = rng.normal(size=(TABULAR_SAMPLES, TABULAR_FEATURES))
    y = (
        x @ rng.normal(size=(TABULAR_FEATURES, 1))
        + 0.5
        + 0.1 * rng.normal(size=(TABULAR_SAMPLES, 1))
    )
    return ArrayDataset(x.astype(np.float32), y.astype(np.float32)), None


def _tabular_classification(cfg: Any) -> tuple[ArrayDataset, ArrayDataset | None]:
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


PARTITIONERS.update(
    {
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
)


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

    def _split(self, cfg: Any, device: int) -> tuple[ArrayDataset, ...]:
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

    def server_data(self, cfg: Any) -> ServerData:
        parts = [self._split(cfg, d) for d in range(SYNTHETIC_SERVER_DEVICES)]
        test = ArrayDataset.concat([p[1] for p in parts])
        val = ArrayDataset.concat([p[2] for p in parts])
        return ServerData(test, val, self.spec(cfg))

    def client_data(self, cfg: Any, partition_id: int, num_partitions: int) -> ArrayDataset:
        return self._split(cfg, partition_id)[0]

    def spec(self, cfg: Any) -> DataSpec:
        return DataSpec((SYNTHETIC_FEATURES,), SYNTHETIC_CLASSES)


HF_PREFIX = "hf:"


@dataclass(frozen=True)
class HuggingFace(Dataset):
    """An image-classification dataset of the Hugging Face hub (``hf:<name>``, online)."""

    name: str

    def server_data(self, cfg: Any) -> ServerData:
        test = _hf_arrays(_federated_dataset(cfg, 1).load_split("test"))
        rows = rng_for(cfg.seed, "server-split").permutation(len(test))
        n_val = round(cfg.server_val_fraction * len(test))
        spec = DataSpec(tuple(test.x.shape[1:]), int(test.y.max()) + 1)
        return ServerData(test.subset(rows[n_val:]), test.subset(rows[:n_val]), spec)

    def client_data(self, cfg: Any, partition_id: int, num_partitions: int) -> ArrayDataset:
        partition = _federated_dataset(cfg, num_partitions).load_partition(partition_id, "train")
        return _hf_arrays(partition)

    def spec(self, cfg: Any) -> DataSpec:
        return load_server_data(cfg).spec


@functools.lru_cache(maxsize=2)
def _federated_dataset(cfg: Any, num_partitions: int) -> Any:
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


def linear(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression (softmax classifier)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def _conv_net(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: tuple[int, int],
    hidden: tuple[int, ...],
) -> nn.Module:
    """Two 5×5 'same' convolutions with 2×2 max-pooling, then fully connected layers."""
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise ConfigError(
            f"model needs image inputs (C, H, W) of at least 4×4, got shape {input_shape}"
        )
    in_channels = input_shape[0]
    features = nn.Sequential(
        nn.Conv2d(in_channels, channels[0], 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels[0], channels[1], 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, *input_shape)).shape[1]
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(flat, width), nn.ReLU()]
        flat = width
    return nn.Sequential(features, *layers, nn.Linear(flat, num_classes))


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """McMahan et al.'s MNIST CNN: conv 32, conv 64 (5×5, pooled), FC 512."""
    return _conv_net(input_shape, num_classes, channels=(32, 64), hidden=(512,))


def cifar_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """McMahan et al.'s CIFAR-10 CNN: conv 64, conv 64 (5×5, pooled), FC 384, FC 192."""
    return _conv_net(input_shape, num_classes, channels=(64, 64), hidden=(384, 192))


task.DATASETS.update(
    {
        "mnist": Pooled(_torchvision("MNIST")),
        "fashion-mnist": Pooled(_torchvision("FashionMNIST")),
        "cifar10": Pooled(_torchvision("CIFAR10")),
        "synthetic": Synthetic(),
        "tabular-classification": Pooled(_tabular_classification, features="vectors"),
        "tabular-regression": Pooled(_tabular_regression, features="vectors", task="regression"),
    }
)
task.DATASET_PREFIXES[HF_PREFIX] = HuggingFace
task.MODELS.update(
    {
        "linear": Architecture(linear),
        "cnn": Architecture(cnn, images_only=True),
        "cifar-cnn": Architecture(cifar_cnn, images_only=True),
    }
)
