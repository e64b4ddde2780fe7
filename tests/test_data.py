"""Datasets, the server/client split, partitioners, Synthetic(α, β) and torchvision offline."""

from __future__ import annotations

import dataclasses
import struct
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fl_app import data as fl_data
from fl_app.data import (
    SYNTHETIC_FEATURES,
    ArrayDataset,
    iid_rows,
    load_client_data,
    load_server_data,
    partition_indices,
    pool,
    synthetic_device,
)
from fl_app.kit.config import RunConfig
from fl_app.kit.seeds import rng_for

NUM_PARTITIONS = 10
PARTITIONERS = tuple(fl_data.PARTITIONERS)
CACHED = ("pool", "_partitioner", "load_server_data", "load_client_data", "_federated_dataset")


def clear_caches() -> None:
    for name in CACHED:
        getattr(fl_data, name).cache_clear()


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


def test_a_default_client_imports_neither_scikit_learn_nor_flwr_datasets() -> None:
    # Each import costs every simulation worker (and every deployment message) a second.
    code = (
        "import sys; from fl_app.kit.config import RunConfig; from fl_app.data import "
        "load_client_data; load_client_data(RunConfig(), 3, 10); "
        "print(sorted({'sklearn', 'flwr_datasets', 'datasets'} & set(sys.modules)))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert imported.strip() == "[]"


def test_digits_are_scikit_learns_exactly() -> None:
    data = pool(RunConfig())
    full = all_digits()
    got = ArrayDataset.concat([data.test, data.server_val, data.clients])
    order = rng_for(RunConfig().seed, "server-split").permutation(len(full))
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


@pytest.mark.parametrize(("test_fraction", "val_fraction"), [(0.2, 0.1), (0.3, 0.05)])
def test_server_test_val_and_client_pool_split_the_data(
    test_fraction: float, val_fraction: float
) -> None:
    cfg = RunConfig(test_fraction=test_fraction, server_val_fraction=val_fraction)
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


def test_server_data_is_the_pool_test_and_val() -> None:
    cfg = RunConfig()
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
    else:  # shard and pathological may leave a remainder out
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


def test_dirichlet_with_small_alpha_skews_labels_more_than_iid() -> None:
    iid = mean_label_skew(RunConfig(partitioner="iid"))
    skewed = mean_label_skew(RunConfig(partitioner="dirichlet", dirichlet_alpha=0.1))
    mild = mean_label_skew(RunConfig(partitioner="dirichlet", dirichlet_alpha=100.0))
    assert skewed > 2 * iid
    assert skewed - iid > 0.2
    assert skewed > mild


@pytest.mark.parametrize("classes_per_client", [1, 2, 3])
def test_pathological_gives_each_client_at_most_its_classes(classes_per_client: int) -> None:
    cfg = RunConfig(partitioner="pathological", classes_per_client=classes_per_client)
    labels = pool(cfg).clients.y
    for p in partitions(cfg):
        assert 1 <= len(np.unique(labels[p])) <= classes_per_client


def test_shard_partitions_have_equal_sizes() -> None:
    cfg = RunConfig(partitioner="shard", shards_per_client=2)
    sizes = {len(p) for p in partitions(cfg)}
    assert len(sizes) == 1


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


# ---- Synthetic(α, β) ----------------------------------------------------------------


def test_synthetic_device_is_deterministic_per_seed_and_device() -> None:
    a = synthetic_device(1.0, 1.0, 3, 5)
    b = synthetic_device(1.0, 1.0, 3, 5)
    assert np.array_equal(a.x, b.x)
    assert np.array_equal(a.y, b.y)
    other_device = synthetic_device(1.0, 1.0, 3, 6)
    other_seed = synthetic_device(1.0, 1.0, 4, 5)
    assert not (len(other_device) == len(a) and np.array_equal(other_device.x, a.x))
    assert not (len(other_seed) == len(a) and np.array_equal(other_seed.x, a.x))


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])
def test_synthetic_shapes_labels_and_counts(alpha: float, beta: float) -> None:
    for device in range(30):
        data = synthetic_device(alpha, beta, 0, device)
        n = len(data)
        assert 50 <= n <= 1000
        assert data.x.shape == (n, SYNTHETIC_FEATURES)
        assert data.x.dtype == np.float32
        assert data.y.dtype == np.int64
        assert data.y.min() >= 0
        assert data.y.max() < 10
        assert np.isfinite(data.x).all()


def test_synthetic_devices_differ_with_alpha_beta_one() -> None:
    devices = [synthetic_device(1.0, 1.0, 0, d) for d in range(10)]
    means = np.array([d.x.mean(axis=0) for d in devices])
    # v_k ~ N(B_k, 1) per feature: two devices' feature means are far apart.
    assert np.abs(means[0] - means[1]).mean() > 0.3
    hists = [label_hist(d.y, 10) for d in devices]
    distances = [total_variation(hists[i], hists[j]) for i in range(10) for j in range(i + 1, 10)]
    assert min(distances) > 0  # no two devices share a label distribution
    assert np.mean(distances) > 0.3


def test_synthetic_heterogeneity_grows_with_alpha_and_beta() -> None:
    def stats(alpha: float, beta: float) -> tuple[float, float, float]:
        devices = [synthetic_device(alpha, beta, 0, d) for d in range(100)]
        spread = float(np.std([d.x.mean() for d in devices]))
        hists = np.array([label_hist(d.y, 10) for d in devices])
        overall = hists.mean(axis=0)
        skew = float(np.mean([total_variation(h, overall) for h in hists]))
        entropy = float(np.mean([-(h[h > 0] * np.log(h[h > 0])).sum() for h in hists]))
        return spread, skew, entropy

    spread_0, skew_0, entropy_0 = stats(0.0, 0.0)
    spread_1, skew_1, entropy_1 = stats(1.0, 1.0)
    # Feature means: v_k ~ N(0, 1) for β=0 (a device's mean over 60 features is near 0),
    # v_k ~ N(B_k, 1) with B_k ~ N(0, 1) for β=1.
    assert spread_1 > 3 * spread_0
    # Labels: with α=β=0 the devices' label distributions are closer to the common one
    # and less concentrated on a device-specific class.
    assert skew_1 > skew_0
    assert entropy_1 < entropy_0


def test_synthetic_server_data() -> None:
    cfg = RunConfig(dataset="synthetic", model="linear")
    server = load_server_data(cfg)
    assert server.spec.input_shape == (SYNTHETIC_FEATURES,)
    assert server.spec.num_classes == 10
    assert server.test.x.shape[1:] == (SYNTHETIC_FEATURES,)
    assert len(server.test) > 0
    assert len(server.val) > 0
    assert fl_data.data_spec(cfg) == server.spec


def test_synthetic_client_data_is_disjoint_from_the_server_part() -> None:
    cfg = RunConfig(dataset="synthetic", model="linear")
    for device in (0, 7):
        client = load_client_data(cfg, device, 20)
        everything = synthetic_device(cfg.synthetic_alpha, cfg.synthetic_beta, cfg.seed, device)
        n = len(everything)
        n_server = round(cfg.test_fraction * n) + round(cfg.server_val_fraction * n)
        assert len(client.train) + len(client.val) == n - n_server
        own = rows(client.train) + rows(client.val)
        assert own - rows(everything) == Counter()  # all of it comes from this device
        server = load_server_data(cfg)
        assert not set(own) & (set(rows(server.test)) | set(rows(server.val)))


# ---- torchvision, offline -------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, folder: str, n_train: int, n_test: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte", images, 2051)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels, 2049)
        arrays[f"{split}-images"], arrays[f"{split}-labels"] = images, labels
    return arrays


@pytest.mark.parametrize(
    ("dataset", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_mnist_from_raw_idx_files(tmp_path: Path, dataset: str, folder: str) -> None:
    arrays = write_mnist(tmp_path, folder, n_train=40, n_test=15)
    cfg = RunConfig(dataset=dataset, data_dir=str(tmp_path), model="cnn")
    server = load_server_data(cfg)
    assert server.spec.input_shape == (1, 28, 28)
    assert server.spec.num_classes == 10
    # The official test split is the server test set, scaled to [0, 1].
    expected = arrays["t10k-images"][:, None].astype(np.float32) / 255.0
    assert server.test.x.dtype == np.float32
    np.testing.assert_allclose(server.test.x, expected, rtol=0, atol=1e-7)
    assert np.array_equal(server.test.y, arrays["t10k-labels"].astype(np.int64))
    assert server.test.x.min() == 0.0
    assert server.test.x.max() == 1.0
    # Server validation and the client pool come from the training split only.
    pooled = pool(cfg)
    train = ArrayDataset(
        arrays["train-images"][:, None].astype(np.float32) / 255.0,
        arrays["train-labels"].astype(np.int64),
    )
    assert len(pooled.server_val) == round(cfg.server_val_fraction * 40)
    assert rows(pooled.server_val) + rows(pooled.clients) == rows(train)
    client = load_client_data(cfg, 1, 3)
    assert client.train.x.shape[1:] == (1, 28, 28)
    assert len(client.train) + len(client.val) == len(partition_indices(cfg, 1, 3))


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_torchvision_dataset_names_data_dir(tmp_path: Path, dataset: str) -> None:
    missing = tmp_path / "nowhere"
    cfg = RunConfig(dataset=dataset, data_dir=str(missing))
    with pytest.raises(FileNotFoundError) as info:
        load_server_data(cfg)
    message = str(info.value)
    assert "data-dir" in message
    assert str(missing) in message
    assert "download" in message
