"""The Flower API halves this copy has, for tests that run a strategy or an app on each."""

from __future__ import annotations

from typing import Any

from tests.fakes import MessageHalf
from tests.legacy_fakes import LegacyHalf  # part: legacy-api

HALVES: dict[str, Any] = {
    "message": MessageHalf(),
    "legacy": LegacyHalf(),  # part: legacy-api
}
# The config keys that run an app on each half (the Message API is the default).
API_CONFIG: dict[str, dict[str, str]] = {
    "message": {},
    "legacy": {"flower-api": "legacy"},  # part: legacy-api
}
# The same as flags of run_simulation.py and as a --run-config string of `flwr run`.
API_FLAGS = {api: [x for k, v in c.items() for x in (f"--{k}", v)] for api, c in API_CONFIG.items()}
API_RUN_CONFIG = {
    api: " ".join(f"{k}='{v}'" for k, v in c.items()) for api, c in API_CONFIG.items()
}
