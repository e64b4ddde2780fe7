"""The centralized reference: the same model trained on the union of the clients' data.

Federated learning pays for keeping data on the clients; this is what the same model
reaches without that constraint, with the same budget: ``num-server-rounds ×
local-epochs`` epochs over the union of every client's training split, the same model
initialisation, optimizer settings and server test set. ``--compare ... centralized``
adds it as a row, so every table shows the federated gap. Knows nothing of Flower.
"""

from __future__ import annotations

import timeit
from collections.abc import Sequence

from fl_app.kit.config import RunConfig
from fl_app.kit.data import load_client_data
from fl_app.kit.keys import ConfigError
from fl_app.kit.results import RoundRecord, RunListener, RunWriter, run_directory
from fl_app.kit.seeds import seed_for
from fl_app.kit.training import ServerModel, train_as_configured
from fl_app.parts.plots import RunPlots
from fl_app.task import ArrayDataset, dataset_of, get_weights

CENTRALIZED = "centralized"


def check_pooled(cfg: RunConfig) -> None:
    """Refuse, in one line, a dataset whose clients' data has no pooled form."""
    if not dataset_of(cfg.dataset).partitioned:
        raise ConfigError(
            f"--compare {CENTRALIZED} is not allowed with dataset {cfg.dataset!r}: it generates "
            "each client's data separately, so there is no pooled training set to train on"
        )


def pooled_training_data(cfg: RunConfig, num_clients: int) -> ArrayDataset:
    """The union of the training splits of clients ``0 .. num_clients - 1``."""
    check_pooled(cfg)
    return ArrayDataset.concat(
        [load_client_data(cfg, pid, num_clients).train for pid in range(num_clients)]
    )


def train_centrally(
    cfg: RunConfig, num_clients: int, listeners: Sequence[RunListener] = ()
) -> list[RoundRecord]:
    """Train on the pooled data; one record per ``local-epochs`` epochs, like a round's.

    The run's folder (``output-dir/run-name``) gets the same files as a federated run's.
    """
    data = pooled_training_data(cfg, num_clients)
    # The federated server's model: the same initial weights, test set and files.
    server = ServerModel(cfg)
    directory = run_directory(cfg)
    listeners = [RunWriter(cfg, directory, server.save), RunPlots(cfg, directory), *listeners]
    rounds: list[RoundRecord] = []
    start = timeit.default_timer()
    for server_round in range(cfg.num_server_rounds + 1):
        round_start = timeit.default_timer()
        record: RoundRecord = {"round": server_round}
        if server_round:
            seed = seed_for(cfg.seed, "centralized-training", server_round)
            record["train_loss"] = train_as_configured(
                cfg, server.model, data, device=server.device, seed=seed
            )
        record |= server.central()
        now = timeit.default_timer()
        record |= {"seconds": now - round_start, "elapsed": now - start}
        rounds.append(record)
        for listener in listeners:
            listener.round_done(rounds)
    for listener in listeners:
        listener.run_done(get_weights(server.model), rounds)
    return rounds
