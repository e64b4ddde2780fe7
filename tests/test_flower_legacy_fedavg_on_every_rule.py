"""Flower's own FedAvg unit tests (tests/test_flower_legacy_fedavg.py, Flower's file) on the
legacy class of every registered rule, each a drop-in for Flower's FedAvg. The one exception,
as documented: the weighting test fails for the rules that weigh by a quality metric, which
Flower's results do not carry, and it fails for that reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import strategies.legacy
import tests.test_flower_legacy_fedavg as flower
from strategies import REGISTRY
from strategies.quality_weighted import QualityWeightedRule

FLOWER_TESTS: dict[str, Callable[[], None]] = {
    name: test for name, test in vars(flower).items() if name.startswith("test_")
}
CLASSES = {
    name: getattr(strategies.legacy, rule.__name__.removesuffix("Rule"))
    for name, rule in REGISTRY.items()
}
WEIGHTING = "test_inplace_aggregate_fit_equivalence"  # the FedAvg-weighted average


@pytest.mark.parametrize("test", list(FLOWER_TESTS))
@pytest.mark.parametrize("rule", list(CLASSES))
def test_flowers_fedavg_tests_pass_on_every_rules_class(
    rule: str, test: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []

    def recorded(*args: Any, **kwargs: Any) -> Any:
        made.append(CLASSES[rule](*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(flower, "FedAvg", recorded)
    if not (test == WEIGHTING and issubclass(REGISTRY[rule], QualityWeightedRule)):
        FLOWER_TESTS[test]()
        return
    with pytest.raises(AssertionError):
        FLOWER_TESTS[test]()
    assert made
    metric = made[0].rule.options.quality_metric
    assert f"quality metric {metric!r} missing" in made[0].last_result.problem
