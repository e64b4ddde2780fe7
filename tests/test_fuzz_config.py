"""Bad values for every config key, drawn from the key's own declaration (its type, its bounds,
its choices), not from a list: each is refused in one line that names the key, through
``RunConfig.from_mapping`` (what ``flwr run`` hands the apps) and through ``run_simulation.py``
(exit 2, nothing written). Then values each key accepts but not together (more clients than
examples, on each dataset and partitioner), and what the machine refuses (exit 1, one line)."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import run_simulation
from fl_app import task
from fl_app.kit import data
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import BOUNDS, ConfigError, key_of
from fl_app.server_app import ServerRun, run_server

FIELDS = {key_of(f.name): f for f in dataclasses.fields(RunConfig)}
NUMBERS = {"allow_nan": False, "allow_infinity": False}


def type_of(key: str) -> str:
    return str(FIELDS[key].type)


def out_of_bounds(key: str) -> list[st.SearchStrategy[Any]]:
    """Numbers past each bound the key declares."""
    metadata, integer = FIELDS[key].metadata, type_of(key) == "int"
    drawn = []
    for name, _, holds in BOUNDS:
        limit = metadata.get(name)
        if limit is None:
            continue
        upper = name in ("at_most", "below")  # past it: above the limit
        if integer:
            edge = math.floor(limit) if upper else math.ceil(limit)
            numbers = st.integers(min_value=edge) if upper else st.integers(max_value=edge)
        else:
            numbers = (
                st.floats(min_value=limit, **NUMBERS)
                if upper
                else st.floats(max_value=limit, **NUMBERS)
            )
        drawn.append(numbers.filter(lambda v, holds=holds, limit=limit: not holds(v, limit)))
    return drawn


def outside_choices(key: str) -> list[st.SearchStrategy[Any]]:
    choices = FIELDS[key].metadata.get("choices")
    return [] if choices is None else [st.text(max_size=12).filter(lambda v: v not in choices)]


def non_finite(key: str) -> list[st.SearchStrategy[Any]]:
    return [st.sampled_from([math.nan, math.inf, -math.inf])] if type_of(key) == "float" else []


def of_another_type(key: str) -> st.SearchStrategy[Any]:
    others = {
        "int": st.floats() | st.text(max_size=8) | st.booleans(),
        "float": st.text(max_size=8) | st.booleans(),
        "bool": st.integers()
        | st.floats()
        | st.text(max_size=8).filter(lambda v: v.lower() not in ("true", "false")),
        "str": st.integers() | st.floats() | st.booleans(),
    }[type_of(key)]
    return others | st.none() | st.lists(st.integers(), max_size=2)


def declared_bad(key: str) -> list[st.SearchStrategy[Any]]:
    """What the key's declaration refuses and a command line can say (a string of it)."""
    return out_of_bounds(key) + outside_choices(key) + non_finite(key)


def assert_one_line(error: BaseException | str, key: str) -> None:
    text = str(error).strip()
    assert "\n" not in text, text
    assert key in text, text


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_bad_value_of_any_key_is_one_line_naming_it(data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(FIELDS)), label="key")
    value = data.draw(st.one_of([of_another_type(key), *declared_bad(key)]), label="value")
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({key: value})
    assert_one_line(info.value, key)
    assert "is not allowed: must be" in str(info.value)


FLAGGED = sorted(key for key in FIELDS if declared_bad(key))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_declared_bad_flag_exits_2_with_one_line_and_writes_nothing(
    data: st.DataObject, capsys: pytest.CaptureFixture[str]
) -> None:
    key = data.draw(st.sampled_from(FLAGGED), label="key")
    value = data.draw(st.one_of(declared_bad(key)), label="value")
    with pytest.raises(ConfigError):  # no run starts from a value the config refuses
        RunConfig.from_mapping({key: value})
    capsys.readouterr()
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "out"
        argv = [f"--{key}={value}", "--output-dir", str(output)]
        assert run_simulation.main(argv) == 2
        assert not output.exists()
    error = capsys.readouterr().err
    assert error.startswith("error: ")
    assert_one_line(error, key)


# ---- values each key accepts, refused across keys or by the machine ----------------------
def main_says(argv: list[str], capsys: pytest.CaptureFixture[str], output: Path) -> tuple[int, str]:
    """``run_simulation.py ARGV --output-dir OUTPUT``'s exit code and its stderr, which is one
    line; it wrote nothing."""
    capsys.readouterr()
    code = run_simulation.main([*argv, "--output-dir", str(output)])
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: "), error
    assert "\n" not in error, error
    assert not output.exists()
    return code, error


def loadable(dataset: str) -> RunConfig | None:
    """A config of ``dataset`` that keeps every client (None: its files are not here)."""
    cfg = RunConfig.from_mapping({"dataset": dataset, "min-fit-clients": 1})
    cfg = dataclasses.replace(cfg, min_available_clients=1, min_evaluate_clients=0)
    try:
        data.pool(cfg)
    except OSError:
        return None
    return cfg


POOLED = sorted(name for name, d in task.DATASETS.items() if isinstance(d, task.Pooled))
SPLITS = [(name, p) for name in POOLED for p in data.PARTITIONERS if loadable(name) is not None]


@pytest.mark.parametrize(("dataset", "partitioner"), SPLITS)
def test_more_clients_than_examples_is_one_line_on_each_dataset_and_partitioner(
    dataset: str, partitioner: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Each client needs two examples, one to train and one to validate: one more client than
    the pooled data gives two each is refused before Flower starts, on both paths."""
    cfg = loadable(dataset)
    assert cfg is not None
    most = len(data.pool(cfg).clients) // 2
    flags = ["--dataset", dataset, "--partitioner", partitioner, "--min-fit-clients", "1"]
    flags += ["--min-available-clients", "1", "--min-evaluate-clients", "0"]
    try:
        RunConfig.from_mapping({"dataset": dataset, "partitioner": partitioner})
    except ConfigError as refused:  # a split the config refuses for this dataset, in one line
        assert_one_line(refused, "partitioner")
        return
    code, error = main_says([*flags, "--num-clients", str(most + 1)], capsys, tmp_path / "out")
    assert code == 2
    assert f"'num-clients' = {most + 1} is not allowed: must be at most {most}" in error
    too_many = dataclasses.replace(cfg, partitioner=partitioner, num_clients=most + 1)
    with pytest.raises(ConfigError, match="num-clients"):  # the ServerApp of `flwr run`
        run_server(None, ServerRun(too_many))  # type: ignore[arg-type]


def test_a_partition_the_partitioner_cannot_make_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    flags = ["--partitioner", "dirichlet", "--dirichlet-alpha", "0.01", "--num-clients", "200"]
    code, error = main_says(flags, capsys, tmp_path / "out")
    assert code == 2
    assert "'num-clients' = 200 is not allowed: must be a number dirichlet can split into" in error


def test_a_device_that_is_not_there_and_a_folder_that_cannot_be_written_are_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    if not torch.cuda.is_available():
        code, error = main_says(["--device", "cuda"], capsys, tmp_path / "out")
        assert code == 2
        assert "config 'device' = 'cuda' is not allowed" in error
    (tmp_path / "a-file").write_text("")
    code, error = main_says([], capsys, tmp_path / "a-file" / "out")
    assert code == 2
    assert "config 'output-dir'" in error
