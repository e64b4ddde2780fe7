"""The config keys of the optional part ``server-optimizer`` (the server's FedAvgM step,
:mod:`strategies.server_optimizer`)."""

from __future__ import annotations

from fl_app.kit.keys import keys, option


@keys
class ServerOptimizerKeys:
    server_learning_rate: float = option("server learning rate η", above=0)
    server_momentum: float = option("server momentum β", at_least=0, below=1)
