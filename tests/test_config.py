"""RunConfig validation, its sync with pyproject.toml, and the run_simulation.py CLI."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

import run_simulation
import strategies
from fl_app import task
from fl_app.kit import data as fl_data
from fl_app.kit.config import CoreKeys, RunConfig, _checked
from fl_app.kit.keys import ConfigError, key_of, option, pyproject_table
from strategies.quality_weighted import QUALITY_DIRECTIONS, QUALITY_SOURCES, QUALITY_WEIGHTINGS
from strategies.sampling import SAMPLINGS
from tests.processes import ROOT

DEFAULTS = RunConfig()
KEYS = [key_of(f.name) for f in dataclasses.fields(RunConfig)]


def assert_one_line_error(err: ConfigError, key: str, value: Any) -> str:
    """The message is one line that names the key, the bad value and what is allowed."""
    message = str(err)
    assert len(message.splitlines()) == 1, message
    assert message.strip() == message, message
    assert f"'{key}'" in message, message
    assert repr(value) in message, message
    return message


# ---- choice fields ------------------------------------------------------------------

# Each choice list is defined once, where it is implemented; the config reads it there.
# (The core's keys: an optional part's are its own tests'.)
CHOICE_SOURCES: dict[str, Iterable[str]] = {
    "strategy": strategies.CHOICES,
    "dataset": task.DATASETS,
    "partitioner": fl_data.PARTITIONERS,
    "model": task.MODELS,
    "device": ("auto", "cpu", "cuda"),
    "quality-source": QUALITY_SOURCES,
    "quality-direction": QUALITY_DIRECTIONS,
    "quality-weighting": QUALITY_WEIGHTINGS,
    "client-sampling": SAMPLINGS,
}
CHOICE_FIELDS = {key: tuple(source) for key, source in CHOICE_SOURCES.items()}

BAD_CHOICES = [
    ("strategy", "fedprox"),
    ("strategy", "FedAvg"),
    ("strategy", ""),
    ("dataset", "imagenet"),
    ("dataset", "Digits"),
    ("dataset", "dig"),
    ("dataset", ""),
    ("partitioner", "noniid"),
    ("partitioner", "Dirichlet"),
    ("model", "resnet18"),
    ("model", "cnn9"),
    ("device", "gpu"),
    ("device", "cuda:0"),
    ("quality-source", "both"),
    ("quality-direction", "up"),
    ("quality-direction", "higher"),
    ("quality-weighting", "exp"),
    ("client-sampling", "random"),
]


def test_every_choice_field_reads_its_list_where_it_is_implemented() -> None:
    fields = {key_of(f.name): f for f in dataclasses.fields(CoreKeys)}
    with_choices = {key for key, f in fields.items() if f.metadata["choices"] is not None}
    assert with_choices == set(CHOICE_SOURCES)
    for key, source in CHOICE_SOURCES.items():
        assert tuple(fields[key].metadata["choices"]) == tuple(source), key
    assert {key for key, _ in BAD_CHOICES} == set(CHOICE_SOURCES)


def _from_mapping(key: str, value: str) -> RunConfig:
    return RunConfig.from_mapping({key: value})


def _constructor(key: str, value: str) -> RunConfig:
    return RunConfig(**{key.replace("-", "_"): value})


@pytest.mark.parametrize("build", [_from_mapping, _constructor])
@pytest.mark.parametrize(("key", "value"), BAD_CHOICES)
def test_bad_choice_is_refused_with_the_allowed_values(
    key: str, value: str, build: Callable[[str, str], RunConfig]
) -> None:
    with pytest.raises(ConfigError) as info:
        build(key, value)
    message = assert_one_line_error(info.value, key, value)
    for allowed in CHOICE_FIELDS[key]:
        assert allowed in message


@pytest.mark.parametrize(
    ("key", "value"),
    [(key, choice) for key, choices in CHOICE_FIELDS.items() for choice in choices],
)
def test_every_allowed_choice_is_accepted(key: str, value: str) -> None:
    values: dict[str, Any] = {key: value}
    if key == "dataset" and task.DATASETS[value].features != "images":
        values["model"] = "mlp"
    if key == "model" and task.MODELS[value].images_only:
        values["dataset"] = "digits"
    values |= {"momentum": 0.0} if value == "scaffold" else {}  # part: scaffold
    cfg = RunConfig.from_mapping(values)
    assert cfg.run_config[key] == value


# ---- bounded numbers --------------------------------------------------------------

# (key, value just past or at an exclusive bound, what the message says is allowed)
OUT_OF_RANGE = [
    ("num-server-rounds", 0, ">= 1"),
    ("num-clients", 0, ">= 1"),
    ("num-server-rounds", -3, ">= 1"),
    ("fraction-fit", 0.0, "> 0"),
    ("fraction-fit", -0.1, "> 0"),
    ("fraction-fit", 1.0001, "<= 1"),
    ("fraction-evaluate", -0.01, ">= 0"),
    ("fraction-evaluate", 1.01, "<= 1"),
    ("min-fit-clients", 0, ">= 1"),
    ("min-evaluate-clients", -1, ">= 0"),
    ("min-available-clients", 0, ">= 1"),
    ("round-timeout", -0.5, ">= 0"),
    ("local-epochs", 0, ">= 1"),
    ("batch-size", 0, ">= 1"),
    ("learning-rate", 0.0, "> 0"),
    ("learning-rate", -0.001, "> 0"),
    ("momentum", -0.1, ">= 0"),
    ("momentum", 1.0, "< 1"),
    ("proximal-mu", -0.1, ">= 0"),
    ("dirichlet-alpha", 0.0, "> 0"),
    ("dirichlet-alpha", -1.0, "> 0"),
    ("test-fraction", 0.0, "> 0"),
    ("test-fraction", 1.0, "< 1"),
    ("server-val-fraction", 0.0, "> 0"),
    ("server-val-fraction", 1.0, "< 1"),
    ("val-fraction", 0.0, "> 0"),
    ("val-fraction", 1.0, "< 1"),
    ("seed", -1, ">= 0"),
    ("max-empty-rounds", -1, ">= 0"),
    ("quality-temperature", 0.0, "> 0"),
    ("hybrid-lambda", -0.01, ">= 0"),
    ("hybrid-lambda", 1.01, "<= 1"),
    ("hybrid-lambda-end", -1.01, ">= -1"),
    ("hybrid-lambda-end", 1.01, "<= 1"),
    ("learning-rate", math.nan, "a finite number"),
    ("hybrid-lambda", math.nan, "a finite number"),
]


def assert_bounds_refused(keys: type, rows: list[tuple[str, float, str]]) -> None:
    """Each row's value is refused with its bound, and ``rows`` cover every bounded key of
    the keys class ``keys`` (an optional part's tests call this for its own keys)."""
    bounded = {
        key_of(f.name)
        for f in dataclasses.fields(keys)
        if any(f.metadata[b] is not None for b in ("at_least", "above", "at_most", "below"))
    }
    assert {key for key, _, _ in rows} == bounded
    for key, value, allowed in rows:
        with pytest.raises(ConfigError) as info:
            RunConfig.from_mapping({key: value})
        assert f"must be {allowed}" in assert_one_line_error(info.value, key, value)


def test_out_of_range_table_covers_every_bounded_field() -> None:
    bounded = {
        key_of(f.name)
        for f in dataclasses.fields(CoreKeys)  # an optional part's: its own tests
        if any(f.metadata[b] is not None for b in ("at_least", "above", "at_most", "below"))
    }
    assert {key for key, _, _ in OUT_OF_RANGE} == bounded


@pytest.mark.parametrize(("key", "value", "allowed"), OUT_OF_RANGE)
def test_out_of_range_number_is_refused(key: str, value: float, allowed: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: value})
    message = assert_one_line_error(info.value, key, value)
    assert f"must be {allowed}" in message


# Values exactly at an inclusive bound (or just inside an exclusive one) are fine.
AT_THE_BOUND = [
    ("num-server-rounds", 1),
    ("fraction-fit", 1.0),
    ("fraction-fit", 1e-9),
    ("fraction-evaluate", 0.0),
    ("fraction-evaluate", 1.0),
    ("min-fit-clients", 1),
    ("min-evaluate-clients", 0),
    ("round-timeout", 0.0),
    ("local-epochs", 1),
    ("batch-size", 1),
    ("learning-rate", 1e-9),
    ("momentum", 0.0),
    ("momentum", 0.999),
    ("dirichlet-alpha", 1e-6),
    ("test-fraction", 0.01),
    ("server-val-fraction", 0.01),
    ("val-fraction", 0.01),
    ("val-fraction", 0.99),
    ("seed", 0),
    ("hybrid-lambda", 0.0),
    ("hybrid-lambda", 1.0),
    ("hybrid-lambda-end", -1.0),
    ("hybrid-lambda-end", 1.0),
]


@pytest.mark.parametrize(("key", "value"), AT_THE_BOUND)
def test_value_at_the_bound_is_accepted(key: str, value: float) -> None:
    assert RunConfig.from_mapping({key: value}).run_config[key] == value


# ---- types --------------------------------------------------------------------------

WRONG_TYPES = [
    ("num-server-rounds", "5", "int"),
    ("num-server-rounds", 2.5, "int"),
    ("num-server-rounds", 3.0, "int"),
    ("num-server-rounds", True, "int"),
    ("batch-size", False, "int"),
    ("seed", "42", "int"),
    ("seed", None, "int"),
    ("local-epochs", [1], "int"),
    ("learning-rate", "0.1", "float"),
    ("learning-rate", True, "float"),
    ("fraction-fit", None, "float"),
    ("dataset", 5, "str"),
    ("strategy", None, "str"),
    ("run-name", False, "str"),
]


@pytest.mark.parametrize(("key", "value", "type_name"), WRONG_TYPES)
def test_wrong_type_is_refused(key: str, value: Any, type_name: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: value})
    message = assert_one_line_error(info.value, key, value)
    assert type_name in message


@pytest.mark.parametrize(
    ("key", "value"), [("learning-rate", 1), ("fraction-fit", 1), ("quality-floor", -2)]
)
def test_ints_are_accepted_for_floats(key: str, value: int) -> None:
    got = RunConfig.from_mapping({key: value}).run_config[key]
    assert got == value
    assert type(got) is float


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("false", False), ("True", True), ("FALSE", False), (True, True)],
)
def test_bool_strings_are_accepted(text: str | bool, expected: bool) -> None:
    assert coerce("a-switch", text, "bool") is expected
    with pytest.raises(ConfigError, match=r"'a-switch' = 'yes'.*of type bool"):
        coerce("a-switch", "yes", "bool")


def coerce(key: str, value: Any, type_name: str) -> Any:
    """``value`` as the config makes it for a field of ``type_name`` (no choices, no bounds)."""
    field = option("a test field")
    field.type = type_name
    return _checked(key, value, field)


@pytest.mark.parametrize(
    "key", ["num-rounds", "num_server_rounds", "Strategy", "lr", "", "strategy "]
)
def test_unknown_key_is_refused_and_named(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: 1})
    message = str(info.value)
    assert "\n" not in message
    assert repr(key) in message
    assert "num-server-rounds" in message  # says which keys are known


# ---- cross-field rules ------------------------------------------------------------

COMBINATIONS = [
    ({"min-fit-clients": 3}, "min-fit-clients", 3),
    (
        {"min-fit-clients": 5, "min-available-clients": 4, "min-evaluate-clients": 1},
        "min-fit-clients",
        5,
    ),
    ({"min-evaluate-clients": 3}, "min-evaluate-clients", 3),
    ({"test-fraction": 0.5, "server-val-fraction": 0.4}, "server-val-fraction", 0.4),
    ({"test-fraction": 0.85, "server-val-fraction": 0.3}, "server-val-fraction", 0.3),
    (
        {"quality-weighting": "linear", "quality-metric": "val_loss"},
        "quality-floor",
        0.0,
    ),
    (
        {"quality-weighting": "linear", "quality-metric": "val_loss", "quality-floor": -1.0},
        "quality-floor",
        -1.0,
    ),
    (
        {"quality-weighting": "linear", "quality-direction": "min", "quality-floor": 0.0},
        "quality-floor",
        0.0,
    ),
    (
        {"quality-weighting": "linear", "quality-metric": "Train_Loss"},
        "quality-floor",
        0.0,
    ),
]


@pytest.mark.parametrize(("values", "key", "value"), COMBINATIONS)
def test_bad_combination_is_refused(values: dict[str, Any], key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping(values)
    assert_one_line_error(info.value, key, value)


@pytest.mark.parametrize(
    "values",
    [
        {"min-fit-clients": 4, "min-evaluate-clients": 4, "min-available-clients": 4},
        {"min-fit-clients": 1, "min-evaluate-clients": 0, "min-available-clients": 1},
        {"test-fraction": 0.5, "server-val-fraction": 0.3},
        {"quality-weighting": "linear", "quality-metric": "val_loss", "quality-floor": 2.0},
        {"quality-weighting": "linear", "quality-metric": "val_accuracy", "quality-floor": 0.0},
        {"quality-weighting": "linear", "quality-metric": "val_loss", "quality-direction": "max"},
        {"quality-weighting": "softmax", "quality-metric": "val_loss", "quality-floor": 0.0},
    ],
)
def test_good_combination_is_accepted(values: dict[str, Any]) -> None:
    cfg = RunConfig.from_mapping(values)
    for key, value in values.items():
        assert cfg.run_config[key] == value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("learning-rate", math.inf),
        ("quality-temperature", math.inf),
        ("dirichlet-alpha", math.inf),
        ("quality-floor", math.nan),
        ("quality-floor", -math.inf),
    ],
)
def test_non_finite_numbers_are_refused(key: str, value: float) -> None:
    # TOML (`inf`, `nan`) and argparse (`--learning-rate inf`) both produce these.
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: value})
    assert_one_line_error(info.value, key, value)


def parsed(argv: list[str]) -> RunConfig:
    """The run config run_simulation.py makes of ``argv``."""
    return run_simulation.parse(argv).cfg


# ---- pyproject.toml and run_config round trip ------------------------------------


def test_the_pyproject_table_is_every_keys_default() -> None:
    table = pyproject_table(ROOT / "pyproject.toml")
    assert set(table) == set(KEYS)  # every key, and nothing else
    assert RunConfig.from_mapping(table) == DEFAULTS == RunConfig()
    for f in dataclasses.fields(RunConfig):
        assert f.default == table[key_of(f.name)], key_of(f.name)
        assert type(f.default).__name__ == f.type, key_of(f.name)


def test_a_bad_pyproject_value_is_one_line_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.flwr.app.config]\nnum-server-rounds = 0\nno-such-key = 1\n")
    monkeypatch.setattr(run_simulation, "PYPROJECT", path)
    assert run_simulation.main([]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: pyproject.toml [tool.flwr.app.config]: unknown config key")


@pytest.mark.parametrize(
    "cfg",
    [
        DEFAULTS,
        RunConfig(
            strategy="hybrid",
            learning_rate=0.2,
            robust_filter="mad",  # part: robust
            hybrid_lambda_end=0.25,
            run_name="r1",
        ),
        RunConfig(partitioner="dirichlet", seed=0),
    ],
)
def test_run_config_round_trips(cfg: RunConfig) -> None:
    assert RunConfig.from_mapping(cfg.run_config) == cfg
    assert list(cfg.run_config) == KEYS


def test_config_is_frozen_and_hashable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.seed = 1  # type: ignore[misc]
    assert hash(RunConfig()) == hash(DEFAULTS)


# ---- run_simulation.py CLI --------------------------------------------------------


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run_simulation.parse(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for key in KEYS:
        assert f"--{key}" in out, key
    for flag in ("--num-cpus", "--num-gpus", "--verbose", "--resume"):
        assert flag in out


def test_parse_without_flags_gives_the_defaults() -> None:
    cfg = parsed([])
    assert cfg == DEFAULTS
    assert cfg.num_clients >= cfg.min_available_clients


def test_flags_override_defaults() -> None:
    cfg = parsed(
        [
            "--strategy",
            "hybrid",
            "--num-server-rounds",
            "3",
            "--learning-rate",
            "0.2",
            "--partitioner",
            "dirichlet",
            "--dirichlet-alpha",
            "0.3",
            "--run-name",
            "abc",
            "--num-clients",
            "4",
        ]
    )
    assert cfg == dataclasses.replace(
        DEFAULTS,
        strategy="hybrid",
        num_server_rounds=3,
        learning_rate=0.2,
        partitioner="dirichlet",
        dirichlet_alpha=0.3,
        run_name="abc",
        num_clients=4,
    )
    assert cfg.num_clients == 4


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--num-server-rounds", "0"], "num-server-rounds"),
        (["--dataset", "imagenet"], "dataset"),
        (["--quality-weighting", "linear", "--quality-metric", "val_loss"], "quality-floor"),
        (["--min-fit-clients", "3"], "min-fit-clients"),
    ],
)
def test_main_refuses_a_bad_config_with_one_error_line(
    argv: list[str], key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_simulation.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"error: config {key!r} = ")
    assert captured.out == ""


def test_too_few_clients_for_min_available_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert DEFAULTS.min_available_clients == 2
    with pytest.raises(ConfigError) as info:
        run_simulation.parse(["--num-clients", "1"])
    message = str(info.value)
    assert "\n" not in message
    assert "'num-clients' = 1" in message
    assert run_simulation.main(["--num-clients", "1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")


@pytest.mark.parametrize("num_clients", ["0", "-2"])
def test_non_positive_num_clients_is_refused(num_clients: str) -> None:
    with pytest.raises(ConfigError, match="'num-clients'"):
        run_simulation.parse(["--num-clients", num_clients])


def test_one_client_is_fine_when_the_minimums_allow_it() -> None:
    cfg = parsed(
        [
            "--num-clients",
            "1",
            "--min-available-clients",
            "1",
            "--min-fit-clients",
            "1",
            "--min-evaluate-clients",
            "1",
        ]
    )
    assert cfg.num_clients == 1
    assert cfg.min_available_clients == 1
