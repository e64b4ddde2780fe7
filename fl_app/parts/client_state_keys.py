"""The config key of the optional part ``client-state`` (no Flower: the config imports it)."""

from __future__ import annotations

from typing import Any  # part: legacy-api

from fl_app.kit.keys import (
    fail,  # part: legacy-api
    keys,
    option,
)
from strategies.client_states import CLIENT_STATE_PLACES


@keys
class ClientStateKeys:
    personal_layers: int = option(
        "the model's last arrays each client keeps as its own (2: a linear head; 0: none)",
        at_least=0,
    )
    client_state_on: str = option(
        "where a client's state waits between its rounds: server (sent with its messages, in "
        "checkpoints) or node (on the node's disk, never sent)",
        choices=CLIENT_STATE_PLACES,
    )

    def check(self) -> None:  # part: legacy-api
        super().check()  # type: ignore[misc]  # part: legacy-api
        cfg: Any = self  # the whole RunConfig  # part: legacy-api
        if cfg.personal_layers and cfg.flower_api == "legacy":  # part: legacy-api
            fail("personal-layers", cfg.personal_layers, "0 with legacy")  # part: legacy-api
        if cfg.client_state_on != "server" and cfg.flower_api == "legacy":  # part: legacy-api
            fail("client-state-on", cfg.client_state_on, "server with legacy")  # part: legacy-api
