"""One typed, validated run configuration.

Each field is a key of ``[tool.flwr.app.config]`` in ``pyproject.toml`` (``snake_case``
here, ``kebab-case`` there) and a ``--flag`` of ``run_simulation.py``. A bad key or value
stops the run at start with one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import strategies
from strategies.core import ServerOptions
from strategies.hybrid import ROBUST_FILTERS, HybridOptions
from strategies.quality_weighted import (
    QUALITY_DIRECTIONS,
    QUALITY_SOURCES,
    QUALITY_WEIGHTINGS,
    QualityOptions,
    QualityWeightedRule,
    higher_is_better,
)

DATASETS = (
    "digits",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "synthetic",
    "tabular-classification",
    "tabular-regression",
)
REGRESSION_DATASETS = ("tabular-regression",)
VECTOR_DATASETS = ("synthetic", "tabular-classification", "tabular-regression")
HF_PREFIX = "hf:"
PARTITIONERS = ("iid", "dirichlet", "shard", "pathological")
MODELS = ("linear", "mlp", "cnn", "cifar-cnn")
IMAGE_MODELS = ("cnn", "cifar-cnn")
DEVICES = ("auto", "cpu", "cuda")
FAULT_KINDS = (
    "none",
    "raise",
    "straggle",
    "nan",
    "inf",
    "wrong-shape",
    "zero-examples",
    "negative-examples",
    "scale",
    "sign-flip",
    "lie-quality",
)


def task_of(dataset: str) -> str:
    """``regression`` or ``classification``: what the loss and the metrics are."""
    return "regression" if dataset in REGRESSION_DATASETS else "classification"


class ConfigError(ValueError):
    """A configuration key has a value that is not allowed."""


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
) -> Any:
    """A config field with its help text and the values it allows."""
    bounds = {"at_least": at_least, "above": above, "at_most": at_most, "below": below}
    return field(default=default, metadata={"help": help, "choices": choices, **bounds})


def default_of(options: type[ServerOptions], name: str) -> Any:
    """The default of strategy option ``name``: the strategy owns it, the config reads it."""
    return options.__dataclass_fields__[name].default


def key_of(name: str) -> str:
    """Config key (kebab-case) of a dataclass field name."""
    return name.replace("_", "-")


@dataclass(frozen=True)
class RunConfig:
    """Every knob of a run, with its default."""

    # Strategy and rounds
    strategy: str = option(
        "fedavg", "aggregation strategy", choices=tuple(sorted(strategies.REGISTRY))
    )
    flower_api: str = option(
        "legacy",
        "Flower API half the server runs: legacy (flwr.server.strategy, NumPyClient "
        "messages) or message (flwr.serverapp.strategy, ArrayRecord messages)",
        choices=strategies.FLOWER_APIS,
    )
    num_server_rounds: int = option(10, "number of federated rounds", at_least=1)
    fraction_fit: float = option(
        1.0, "fraction of clients sampled to train per round", above=0, at_most=1
    )
    fraction_evaluate: float = option(
        0.5, "fraction of clients sampled for federated evaluation (0: none)", at_least=0, at_most=1
    )
    min_fit_clients: int = option(2, "minimum clients to train per round", at_least=1)
    min_evaluate_clients: int = option(2, "minimum clients to evaluate per round", at_least=0)
    min_available_clients: int = option(
        2, "clients that must be connected before a round starts", at_least=1
    )
    round_timeout: float = option(
        0.0, "seconds to wait for clients per round (0: no limit)", at_least=0
    )
    # Local training
    local_epochs: int = option(3, "local epochs per round on each client", at_least=1)
    batch_size: int = option(16, "local mini-batch size", at_least=1)
    learning_rate: float = option(0.05, "client SGD learning rate", above=0)
    momentum: float = option(0.9, "client SGD momentum (reset every round)", at_least=0, below=1)
    # Data
    dataset: str = option(
        "digits",
        "dataset: digits (embedded, offline), mnist, fashion-mnist, cifar10 (torchvision, "
        "from data-dir), synthetic (FedProx Synthetic(α,β)), tabular-classification / "
        "tabular-regression (10 generated features), or hf:<name> (Hugging Face, online)",
        choices=DATASETS,
    )
    data_dir: str = option("data", "root folder of torchvision datasets")
    download: bool = option(False, "let torchvision download the dataset into data-dir")
    partitioner: str = option(
        "iid", "how the pooled training data is split over clients", choices=PARTITIONERS
    )
    dirichlet_alpha: float = option(
        0.5, "Dirichlet(α) label-skew concentration (small: more skew)", above=0
    )
    shards_per_client: int = option(2, "shards per client for the shard partitioner", at_least=1)
    classes_per_client: int = option(
        2, "classes per client for the pathological partitioner", at_least=1
    )
    synthetic_alpha: float = option(1.0, "Synthetic(α, β): model heterogeneity α", at_least=0)
    synthetic_beta: float = option(1.0, "Synthetic(α, β): data heterogeneity β", at_least=0)
    test_fraction: float = option(
        0.2, "share of the pooled data held out as the server test set", above=0, below=1
    )
    server_val_fraction: float = option(
        0.1, "share of the pooled data held out for server-side quality scoring", above=0, below=1
    )
    val_fraction: float = option(
        0.1, "share of each client's data held out for local validation", above=0, below=1
    )
    # Model and run
    model: str = option("mlp", "model architecture", choices=MODELS)
    seed: int = option(42, "seed of data splits, partitioning, model init and training", at_least=0)
    device: str = option("auto", "torch device (auto: cuda when available)", choices=DEVICES)
    output_dir: str = option("outputs", "folder that receives <run-name>/history.json")
    run_name: str = option("", "name of this run's output folder (empty: strategy and time)")
    # Strategy knobs (each strategy reads the fields of its options dataclass; the
    # defaults are the strategies' own)
    server_learning_rate: float = option(
        default_of(ServerOptions, "server_learning_rate"), "server learning rate η", above=0
    )
    server_momentum: float = option(
        default_of(ServerOptions, "server_momentum"),
        "server momentum β (FedAvgM)",
        at_least=0,
        below=1,
    )
    max_empty_rounds: int = option(
        default_of(ServerOptions, "max_empty_rounds"),
        "stop the run with an error after this many rounds in a row that aggregated "
        "nothing (0: never stop)",
        at_least=0,
    )
    quality_source: str = option(
        default_of(QualityOptions, "quality_source"),
        "quality from the client's metric or from server-side scoring",
        choices=QUALITY_SOURCES,
    )
    quality_metric: str = option(
        default_of(QualityOptions, "quality_metric"),
        "metric used as quality (val_accuracy, val_loss)",
    )
    quality_direction: str = option(
        default_of(QualityOptions, "quality_direction"),
        "max/min: higher/lower quality is better; auto: min iff the metric is a loss",
        choices=QUALITY_DIRECTIONS,
    )
    quality_weighting: str = option(
        default_of(QualityOptions, "quality_weighting"),
        "quality → weight map",
        choices=QUALITY_WEIGHTINGS,
    )
    quality_temperature: float = option(
        default_of(QualityOptions, "quality_temperature"), "softmax temperature τ", above=0
    )
    quality_floor: float = option(
        default_of(QualityOptions, "quality_floor"),
        "linear map: quality at which the weight is zero",
    )
    hybrid_lambda: float = option(
        default_of(HybridOptions, "hybrid_lambda"),
        "hybrid: share λ of the data-size weights",
        at_least=0,
        at_most=1,
    )
    hybrid_lambda_end: float = option(
        default_of(HybridOptions, "hybrid_lambda_end"),
        "hybrid: λ at the last round, moved linearly (-1: constant λ)",
        at_least=-1,
        at_most=1,
    )
    robust_filter: str = option(
        default_of(HybridOptions, "robust_filter"),
        "hybrid: robust filter on update norms",
        choices=ROBUST_FILTERS,
    )
    robust_mad_k: float = option(
        default_of(HybridOptions, "robust_mad_k"),
        "hybrid mad filter: drop norms above median + k·MAD",
        above=0,
    )
    robust_clip_norm: float = option(
        default_of(HybridOptions, "robust_clip_norm"),
        "hybrid clip filter: max update norm (0: the round's median)",
        at_least=0,
    )
    # Fault injection, for tests and robustness experiments (off by default)
    fault_kind: str = option(
        "none", "what the faulty clients do (see fl_app/faults.py)", choices=FAULT_KINDS
    )
    fault_fraction: float = option(
        0.0, "share of clients that are faulty (the same ones every round)", at_least=0, at_most=1
    )
    fault_scale: float = option(10.0, "fault-kind scale: factor applied to the update", above=0)
    straggle_seconds: float = option(
        30.0, "fault-kind straggle: delay before answering", at_least=0
    )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from ``{kebab-key: value}`` (a Flower ``run_config``); defaults fill the rest."""
        fields = {key_of(f.name): f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(fields)}")
            kwargs[fields[key].name] = value
        return cls(**kwargs)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            key = key_of(f.name)
            value = _coerce(key, getattr(self, f.name), f.type)
            object.__setattr__(self, f.name, value)  # frozen: ints become floats, "true" a bool
            _check_field(key, value, f.metadata)
        self._check_combinations()

    def _check_combinations(self) -> None:
        if self.min_fit_clients > self.min_available_clients:
            _fail(
                "min-fit-clients",
                self.min_fit_clients,
                f"at most min-available-clients ({self.min_available_clients})",
            )
        if self.min_evaluate_clients > self.min_available_clients:
            _fail(
                "min-evaluate-clients",
                self.min_evaluate_clients,
                f"at most min-available-clients ({self.min_available_clients})",
            )
        if self.test_fraction + self.server_val_fraction >= 0.9:
            _fail(
                "server-val-fraction",
                self.server_val_fraction,
                f"test-fraction + server-val-fraction below 0.9 (test-fraction is {self.test_fraction})",
            )
        if self.dataset in VECTOR_DATASETS and self.model in IMAGE_MODELS:
            _fail(
                "model",
                self.model,
                f"linear or mlp with dataset {self.dataset!r} (feature vectors, not images)",
            )
        if self.dataset == "synthetic" and self.partitioner != "iid":
            _fail(
                "partitioner",
                self.partitioner,
                "iid with dataset 'synthetic' (each client's data comes from its own generator)",
            )
        regression = task_of(self.dataset) == "regression"
        if regression and self.partitioner != "iid":
            _fail(
                "partitioner",
                self.partitioner,
                f"iid with regression dataset {self.dataset!r} (the others split by class)",
            )
        uses_quality = issubclass(strategies.REGISTRY[self.strategy], QualityWeightedRule)
        if regression and uses_quality and "accuracy" in self.quality_metric:
            _fail(
                "quality-metric",
                self.quality_metric,
                "a loss (e.g. val_loss) for a regression dataset",
            )
        lower_is_better = not higher_is_better(self.quality_metric, self.quality_direction)
        if self.quality_weighting == "linear" and lower_is_better and self.quality_floor <= 0:
            _fail(
                "quality-floor",
                self.quality_floor,
                "> 0 for a lower-is-better metric (it is the worst loss that still gets weight)",
            )

    @property
    def run_config(self) -> dict[str, Any]:
        """This config as a Flower ``run_config`` (kebab-case keys)."""
        return {key_of(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}


def _fail(key: str, value: Any, allowed: str) -> NoReturn:
    raise ConfigError(f"config {key!r} = {value!r} is not allowed: must be {allowed}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check the type of ``value``; accept ints for floats and true/false strings for bools."""
    type_name = annotation if isinstance(annotation, str) else annotation.__name__
    if type_name == "bool":
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    elif type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif type_name == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, str):
        return value
    _fail(key, value, f"of type {type_name}")


def _check_field(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        _fail(key, value, "a finite number")
    choices = meta.get("choices")
    if (
        choices is not None
        and value not in choices
        and not (
            key == "dataset"
            and isinstance(value, str)
            and value.startswith(HF_PREFIX)
            and len(value) > 3
        )
    ):
        _fail(
            key,
            value,
            f"one of {', '.join(choices)}" + (" or hf:<name>" if key == "dataset" else ""),
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        return
    for name, symbol, holds in _BOUNDS:
        limit = meta.get(name)
        if limit is not None and not holds(value, limit):
            _fail(key, value, f"{symbol} {limit}")


_BOUNDS = (
    ("at_least", ">=", operator.ge),
    ("above", ">", operator.gt),
    ("at_most", "<=", operator.le),
    ("below", "<", operator.lt),
)
