"""Each client's own state between the client's rounds (the optional part ``client-state``),
kept by the server (``client_state_on = "server"``): a base of
:class:`~strategies.core.state.StrategyState`, so checkpoints hold it and ``--resume`` continues
with it; or by the client's node (``"node"``), which the state's ``client_state_run`` names the
run to. Numpy only: :mod:`strategies.stateful_messages` moves it to and from Flower's records."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from strategies.aggregate import Array

CLIENT_STATE_PLACES = ("server", "node")  # where a client's state waits between its rounds

# A client's records by name; a record is (kind, items): "arrays" holds numpy arrays by key,
# "config" and "metrics" hold values (numbers, text, lists of them).
Records = dict[str, tuple[str, dict[str, Any]]]


@dataclass(frozen=True, kw_only=True)
class ClientStateOptions:
    """``client_state_on``: where a client's state waits between its rounds, ``server`` (sent
    with the client's messages) or ``node`` (on the node's disk; the server never sees it)."""

    client_state_on: str = "server"

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        if self.client_state_on not in CLIENT_STATE_PLACES:
            place, allowed = self.client_state_on, " or ".join(CLIENT_STATE_PLACES)
            raise ValueError(f"client_state_on={place!r}: must be {allowed}")


@dataclass
class ClientStatesState:
    """``client_states``: each client's records, by client id (its partition), where the server
    keeps them; ``client_state_run``: the name nodes keep theirs under (set in the first round
    that needs it; a resumed run keeps it)."""

    client_states: dict[str, Records] = field(default_factory=dict)
    client_state_run: str = ""

    def to_arrays(self) -> dict[str, list[Array]]:
        arrays: dict[str, list[Array]] = super().to_arrays()  # type: ignore[misc]
        if self.client_state_run:
            arrays["client_state_run"] = [np.array(self.client_state_run)]
        layout: dict[str, dict[str, list[Any]]] = {}
        tensors: list[Array] = []
        for client, records in self.client_states.items():
            for name, (kind, items) in records.items():
                entries = dict(items)
                if kind == "arrays":  # an index into the tensors that follow the layout
                    entries = {key: len(tensors) + i for i, key in enumerate(items)}
                    tensors += [np.array(value) for value in items.values()]
                layout.setdefault(client, {})[name] = [kind, entries]
        if layout:
            arrays["client_states"] = [np.array(json.dumps(layout)), *tensors]
        return arrays

    @classmethod
    def fields_from(cls, arrays: Mapping[str, Sequence[Array]]) -> dict[str, Any]:
        fields: dict[str, Any] = super().fields_from(arrays)  # type: ignore[misc]
        if run := arrays.get("client_state_run"):
            fields["client_state_run"] = str(run[0])
        stored = arrays.get("client_states") or []
        layout = json.loads(str(stored[0])) if stored else {}
        fields["client_states"] = {
            client: {
                name: (kind, {k: np.array(stored[1 + i]) for k, i in entries.items()})
                if kind == "arrays"
                else (kind, entries)
                for name, (kind, entries) in records.items()
            }
            for client, records in layout.items()
        }
        return fields
