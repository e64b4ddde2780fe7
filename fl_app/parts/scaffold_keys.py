"""What SCAFFOLD needs of the other keys (the optional part ``scaffold``; no Flower: the config
imports it)."""

from __future__ import annotations

from typing import Any

from fl_app.kit.keys import fail, keys


@keys
class ScaffoldKeys:
    def check(self) -> None:
        super().check()  # type: ignore[misc]
        cfg: Any = self  # the whole RunConfig
        if cfg.strategy != "scaffold":
            return
        if cfg.momentum != 0:  # c_i⁺ reads the drift of plain SGD steps
            fail(
                "momentum", cfg.momentum, "0 with strategy scaffold (its variates assume plain SGD)"
            )
        if cfg.flower_api != "message":  # part: legacy-api
            fail("flower-api", cfg.flower_api, "message with strategy scaffold")  # part: legacy-api
        if cfg.dp != "none":  # part: dp
            fail("dp", cfg.dp, "none with strategy scaffold")  # part: dp
