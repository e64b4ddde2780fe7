"""The config keys of the optional part ``server-optimizer`` (the server's optimizer step,
:mod:`strategies.server_optimizer`)."""

from __future__ import annotations

from typing import Any

from fl_app.kit.keys import fail, keys, option
from strategies.server_optimizer import OPTIMIZERS


@keys
class ServerOptimizerKeys:
    server_optimizer: str = option("the server's step on the aggregate", choices=OPTIMIZERS)
    server_learning_rate: float = option("server learning rate η", above=0)
    server_momentum: float = option("sgd's server momentum β", at_least=0, below=1)
    server_beta_1: float = option("adagrad/adam/yogi: first-moment decay β₁", at_least=0, below=1)
    server_beta_2: float = option("adam/yogi: second-moment decay β₂", at_least=0, below=1)
    server_tau: float = option("adagrad/adam/yogi: adaptivity τ of m / (√v + τ)", above=0)

    def check(self) -> None:
        super().check()  # type: ignore[misc]
        cfg: Any = self  # the whole RunConfig
        if cfg.server_momentum and cfg.server_optimizer != "sgd":
            wanted = f"0 with server-optimizer {cfg.server_optimizer!r} (its momentum is β₁)"
            fail("server-momentum", cfg.server_momentum, wanted)
