"""Bad values for every config key, drawn from the key's own declaration (its type, its bounds,
its choices), not from a list: each is refused in one line that names the key, through
``RunConfig.from_mapping`` (what ``flwr run`` hands the apps) and through ``run_simulation.py``
(exit 2, nothing written)."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import run_simulation
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import BOUNDS, ConfigError, key_of

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
