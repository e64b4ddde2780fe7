"""The optional part ``zoo``: its datasets (torchvision's offline, Synthetic(α, β)), models,
partitioners and config keys."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import run_simulation
from fl_app.kit import data as fl_data
from fl_app.kit.config import RunConfig
from fl_app.kit.data import load_client_data, load_server_data, partition_indices, pool
from fl_app.kit.keys import ConfigError
from fl_app.parts import zoo
from fl_app.parts.zoo import SYNTHETIC_FEATURES, ZooKeys, synthetic_device
from fl_app.task import MODELS, ArrayDataset, build_model
from tests.test_config import assert_bounds_refused, assert_one_line_error
from tests.test_data import (
    clear_caches,
    label_hist,
    partitions,
    rows,
    total_variation,
)
from tests.test_fuzz_config import POOLED, loadable, main_says

IMAGE_MODELS = [name for name, model in MODELS.items() if model.images_only]


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    clear_caches()
    zoo._federated_dataset.cache_clear()
    yield
    clear_caches()
    zoo._federated_dataset.cache_clear()


def test_the_registry_holds_vector_and_image_models() -> None:
    assert IMAGE_MODELS  # at least one model of each kind, so every case below runs
    assert set(MODELS) - set(IMAGE_MODELS)


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


# ---- config keys ------------------------------------------------------------------

OUT_OF_RANGE = [
    ("shards-per-client", 0, ">= 1"),
    ("classes-per-client", 0, ">= 1"),
    ("synthetic-alpha", -0.1, ">= 0"),
    ("synthetic-beta", -0.1, ">= 0"),
]


def test_every_bounded_key_is_refused_out_of_range() -> None:
    assert_bounds_refused(ZooKeys, OUT_OF_RANGE)


@pytest.mark.parametrize(
    ("key", "value", "type_name"),
    [
        ("download", "yes", "bool"),
        ("download", 1, "bool"),
        ("download", None, "bool"),
        ("data-dir", 1.5, "str"),
    ],
)
def test_wrong_type_is_refused(key: str, value: Any, type_name: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: value})
    assert type_name in assert_one_line_error(info.value, key, value)


@pytest.mark.parametrize(
    ("values", "key", "value"),
    [
        ({"dataset": "synthetic", "partitioner": "dirichlet"}, "partitioner", "dirichlet"),
        ({"dataset": "synthetic", "partitioner": "shard"}, "partitioner", "shard"),
        ({"dataset": "synthetic", "partitioner": "pathological"}, "partitioner", "pathological"),
        ({"dataset": "synthetic", "model": "cnn"}, "model", "cnn"),
        ({"dataset": "synthetic", "model": "cifar-cnn"}, "model", "cifar-cnn"),
        ({"dataset": "tabular-regression", "partitioner": "dirichlet"}, "partitioner", "dirichlet"),
    ],
)
def test_bad_combination_is_refused(values: dict[str, Any], key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(values)
    assert_one_line_error(info.value, key, value)


@pytest.mark.parametrize(
    "values",
    [
        {"dataset": "synthetic", "partitioner": "iid", "model": "linear"},
        {"dataset": "digits", "partitioner": "dirichlet", "model": "cnn"},
        {"dataset": "synthetic", "model": "linear", "download": True, "run-name": "r1"},
        {"dataset": "hf:ylecun/mnist", "partitioner": "shard", "seed": 0},
    ],
)
def test_good_combination_is_accepted_and_round_trips(values: dict[str, Any]) -> None:
    cfg = RunConfig.from_mapping(values)
    for key, value in values.items():
        assert cfg.run_config[key] == value
    assert RunConfig.from_mapping(cfg.run_config) == cfg


@pytest.mark.parametrize("name", ["hf:ylecun/mnist", "hf:uoft-cs/cifar10", "hf:x"])
def test_hugging_face_datasets_are_accepted(name: str) -> None:
    assert RunConfig.from_mapping({"dataset": name}).dataset == name
    assert RunConfig(dataset=name).dataset == name


@pytest.mark.parametrize("value", ["hf:", "hf"])
def test_a_dataset_refusal_names_the_hub_form(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"dataset": value})
    assert "hf:<name>" in assert_one_line_error(info.value, "dataset", value)


def test_the_download_flags_set_the_key() -> None:
    flags = ["--download", "--dataset", "hf:ylecun/mnist"]
    cfg = run_simulation.parse(flags).cfg
    assert (cfg.download, cfg.dataset) == (True, "hf:ylecun/mnist")
    assert run_simulation.parse(["--no-download"]).cfg.download is False


@pytest.mark.parametrize("name", IMAGE_MODELS)
@pytest.mark.parametrize("shape", [(60,), (1, 64), (1, 2, 2)])
def test_image_models_refuse_non_image_shapes(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(name, shape, 10, seed=0)
    assert str(shape) in str(info.value)


def test_dataset_files_that_are_missing_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """torchvision's datasets read files this machine does not have: exit 1, one line that
    says where they were looked for and what to do."""
    missing = [name for name in POOLED if loadable(name) is None]
    assert missing
    for name in missing:
        flags = ["--dataset", name, "--data-dir", str(tmp_path / "empty")]
        code, error = main_says(flags, capsys, tmp_path / "out")
        assert code == 1
        assert f"dataset {name!r} not found under data-dir" in error
        assert "put the files there or set download=true" in error
