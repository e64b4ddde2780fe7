"""The Flower API halves this copy has, for tests that run a strategy on each."""

from __future__ import annotations

from typing import Any

from tests.fakes import MessageHalf
from tests.legacy_fakes import LegacyHalf  # part: legacy-api

HALVES: dict[str, Any] = {
    "message": MessageHalf(),
    "legacy": LegacyHalf(),  # part: legacy-api
}
# The flags of run_simulation.py that run a simulation on each half.
API_FLAGS: dict[str, list[str]] = {
    "message": [],
    "legacy": ["--flower-api", "legacy"],  # part: legacy-api
}
