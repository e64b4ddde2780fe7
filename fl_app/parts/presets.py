"""Named, ready-made scenarios for ``run_simulation.py --preset NAME``.

A preset sets config keys (and the number of clients); flags given on the command line
still win. A preset with ``variants`` is a comparison: one run per variant, on the same
data and seed, then a table and a plot.
"""

from __future__ import annotations

from fl_app.centralized import CENTRALIZED
from fl_app.kit.config import Preset

PRESETS: dict[str, Preset] = {
    "linear-regression": Preset(
        "2 clients fit a linear regression (10 features -> 1 output, MSE), 10 local epochs, "
        "parameter averaging",
        {
            "dataset": "tabular-regression",
            "model": "linear",
            "strategy": "simple",
            "local-epochs": 10,
            "learning-rate": 0.01,
            "momentum": 0.0,
            "fraction-evaluate": 1.0,
            "quality-metric": "val_loss",
        },
        num_clients=2,
    ),
    "softmax-classifier": Preset(
        "4 clients train a softmax classifier on 10 features (3 classes), FedAvg",
        {
            "dataset": "tabular-classification",
            "model": "linear",
            "strategy": "fedavg",
            "local-epochs": 5,
            "learning-rate": 0.05,
            "momentum": 0.0,
        },
        num_clients=4,
    ),
    "digits-iid-vs-dirichlet": Preset(
        "FedAvg on digits, 10 clients: IID partitions vs Dirichlet(0.1) label skew",
        {"strategy": "fedavg"},
        num_clients=10,
        variants={
            "iid": {"partitioner": "iid"},
            "dirichlet-0.1": {"partitioner": "dirichlet", "dirichlet-alpha": 0.1},
        },
    ),
    "strategies": Preset(
        "the four strategies on digits with Dirichlet(0.3) label skew, 10 clients, and the "
        "centralized reference",
        {"partitioner": "dirichlet", "dirichlet-alpha": 0.3},
        num_clients=10,
        variants={name: {"strategy": name} for name in ("simple", "quality", "fedavg", "hybrid")}
        | {CENTRALIZED: {}},
    ),
}
