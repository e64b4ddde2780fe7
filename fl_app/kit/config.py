"""The run configuration: each field a key of pyproject.toml's ``[tool.flwr.app.config]`` (where
its default is) and a flag of ``run_simulation.py``; a bad value stops the run in one line."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import strategies
from fl_app import task
from fl_app.kit import data
from fl_app.kit.keys import BOUNDS, ConfigError, Names, fail, key_of, keys, option
from fl_app.kit.results import RunListener
from fl_app.parts.baseline_keys import BaselineKeys  # part: flower-baselines
from fl_app.parts.client_state_keys import ClientStateKeys  # part: client-state
from fl_app.parts.faults import FaultKeys  # part: faults
from fl_app.parts.legacy.keys import LegacyKeys  # part: legacy-api
from fl_app.parts.privacy import DpKeys  # part: dp
from fl_app.parts.robust_keys import RobustKeys  # part: robust
from fl_app.parts.scaffold_keys import ScaffoldKeys  # part: scaffold
from fl_app.parts.server_optimizer_keys import ServerOptimizerKeys  # part: server-optimizer
from fl_app.parts.tracking import TrackingKeys  # part: tracking
from fl_app.parts.zoo import ZooKeys  # part: zoo
from strategies import quality_weighted as quality
from strategies.sampling import SAMPLINGS

DATASETS = Names(task.DATASETS, task.DATASET_PREFIXES)


@keys
class CoreKeys:
    """The core's keys (an optional part's are in its own files: see :class:`RunConfig`)."""

    # Strategy and rounds
    strategy: str = option("aggregation strategy", choices=Names(strategies.CHOICES))
    num_server_rounds: int = option("number of federated rounds", at_least=1)
    fraction_fit: float = option("fraction of clients sampled to train a round", above=0, at_most=1)
    fraction_evaluate: float = option(
        "fraction of clients sampled for federated evaluation (0: none)", at_least=0, at_most=1
    )
    min_fit_clients: int = option("minimum clients to train per round", at_least=1)
    min_evaluate_clients: int = option("minimum clients to evaluate per round", at_least=0)
    min_available_clients: int = option("clients connected before a round starts", at_least=1)
    client_sampling: str = option("seeded, or flower (Flower's own, unseeded)", choices=SAMPLINGS)
    round_timeout: float = option("seconds a round waits for clients (0: no limit)", at_least=0)
    num_clients: int = option("clients (data partitions); flwr run: num-supernodes", at_least=1)
    # Local training
    local_epochs: int = option("local epochs per round on each client", at_least=1)
    batch_size: int = option("local mini-batch size", at_least=1)
    learning_rate: float = option("client SGD learning rate", above=0)
    momentum: float = option("client SGD momentum (reset every round)", at_least=0, below=1)
    proximal_mu: float = option("FedProx: μ of the local loss's (μ/2)‖w − w_global‖²", at_least=0)
    # Data
    dataset: str = option("the data of clients and server (fl_app/task.py)", choices=DATASETS)
    partitioner: str = option("how data is split over clients", choices=Names(data.PARTITIONERS))
    dirichlet_alpha: float = option("Dirichlet(α) label skew (small: more skew)", above=0)
    test_fraction: float = option("pooled-data share held out as server test set", above=0, below=1)
    server_val_fraction: float = option("pooled-data share for server scoring", above=0, below=1)
    val_fraction: float = option("share of each client's data for validation", above=0, below=1)
    # Model and run
    model: str = option("model architecture (fl_app/task.py)", choices=Names(task.MODELS))
    seed: int = option("seed of data splits, model init, sampling and training", at_least=0)
    device: str = option("torch device (auto: cuda if available)", choices=("auto", "cpu", "cuda"))
    output_dir: str = option("folder that receives <run-name>/history.json")
    run_name: str = option("name of this run's output folder (empty: strategy and time)")
    resume_from: str = option("a run folder to continue from its last checkpoint (empty: none)")
    # Strategy knobs (each strategy reads the fields of its options dataclass)
    max_empty_rounds: int = option("empty rounds in a row that stop the run (0: never)", at_least=0)
    quality_source: str = option("from the clients or the server", choices=quality.QUALITY_SOURCES)
    quality_metric: str = option("metric used as quality (e.g. val_loss)")
    quality_direction: str = option(
        "max/min: higher/lower is better; auto: min iff a loss", choices=quality.QUALITY_DIRECTIONS
    )
    quality_weighting: str = option("quality → weight", choices=quality.QUALITY_WEIGHTINGS)
    quality_temperature: float = option("softmax temperature τ", above=0)
    quality_floor: float = option("linear map: quality whose weight is zero")
    hybrid_lambda: float = option("hybrid: share λ of data-size weights", at_least=0, at_most=1)
    hybrid_lambda_end: float = option(
        "hybrid: λ at the last round, moved linearly (-1: constant λ)", at_least=-1, at_most=1
    )

    def check(self) -> None:
        """The rules across keys (a part's keys class adds its own and calls ``super()``)."""
        needed = max(self.min_available_clients, self.min_fit_clients)
        if needed > self.num_clients:
            wanted = f">= {needed}: min-available-clients/min-fit-clients need that many"
            fail("num-clients", self.num_clients, f"{wanted} (the run would wait forever)")
        for key in ("min-fit-clients", "min-evaluate-clients"):
            if (value := getattr(self, key.replace("-", "_"))) > self.min_available_clients:
                fail(key, value, f"at most min-available-clients ({self.min_available_clients})")
        if self.test_fraction + self.server_val_fraction >= 0.9:
            wanted = f"test-fraction + server-val-fraction below 0.9 (test-fraction is {self.test_fraction})"
            fail("server-val-fraction", self.server_val_fraction, wanted)
        lower_is_better = not quality.higher_is_better(self.quality_metric, self.quality_direction)
        if self.quality_weighting == "linear" and lower_is_better and self.quality_floor <= 0:
            why = "> 0 for a lower-is-better metric (it is the worst loss that still gets weight)"
            fail("quality-floor", self.quality_floor, why)

    def fit_clients(self, available: int) -> int:
        """Clients a training round samples of ``available`` (as Flower's FedAvg)."""
        return max(int(self.fraction_fit * available), self.min_fit_clients)

    def part_listeners(self, directory: Path) -> list[RunListener]:
        """Listeners the optional parts add to a run in ``directory`` (each calls ``super()``)."""
        return []


@dataclass(frozen=True, kw_only=True)
class RunConfig(
    TrackingKeys,  # part: tracking
    ClientStateKeys,  # part: client-state
    ScaffoldKeys,  # part: scaffold
    BaselineKeys,  # part: flower-baselines
    ZooKeys,  # part: zoo
    DpKeys,  # part: dp
    FaultKeys,  # part: faults
    LegacyKeys,  # part: legacy-api
    RobustKeys,  # part: robust
    ServerOptimizerKeys,  # part: server-optimizer
    CoreKeys,
):
    """Every knob of a run: the core's keys and one base class per optional part this copy has."""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from ``{kebab-key: value}`` (a Flower ``run_config``); defaults fill the rest."""
        names = {key_of(f.name): f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(names)}")
        return cls(**{names[key]: value for key, value in values.items()})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # frozen: each value set as its field's type
            object.__setattr__(self, f.name, _checked(key_of(f.name), getattr(self, f.name), f))
        self.check()

    @property
    def run_config(self) -> dict[str, Any]:
        """This config as a Flower ``run_config`` (kebab-case keys)."""
        return {key_of(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}


def _checked(key: str, value: Any, f: dataclasses.Field[Any]) -> Any:
    """``value`` as the field's type (an int for a float, "true"/"false" for a bool) within its
    choices and bounds, or a one-line refusal."""
    type_name = f.type if isinstance(f.type, str) else f.type.__name__
    if type_name == "bool" and isinstance(value, str) and value.lower() in ("true", "false"):
        value = value.lower() == "true"
    wanted = {"bool": bool, "int": int, "float": int | float}.get(type_name, str)
    if not isinstance(value, wanted) or (type_name != "bool" and isinstance(value, bool)):
        fail(key, value, f"of type {type_name}")
    value = float(value) if type_name == "float" else value
    if isinstance(value, float) and not math.isfinite(value):
        fail(key, value, "a finite number")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        fail(key, value, f"one of {choices.describe()}")
    for name, symbol, holds in BOUNDS:
        limit = f.metadata.get(name)
        if type_name in ("int", "float") and limit is not None and not holds(value, limit):
            fail(key, value, f"{symbol} {limit}")
    return value
