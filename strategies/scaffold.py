"""SCAFFOLD (Karimireddy et al. 2020, option II control variates), the optional part
``scaffold``: control variates correct each client's drift from the global direction. The
server keeps c and folds into it the change c_i⁺ − c_i each accepted client sends; a client
keeps c_i in its own state (part ``client-state``; the server never needs it) and steps along
g(y) − c_i + c (``fl_app/parts/scaffold.py``)::

    client, K steps of SGD at rate η_l:  y ← y − η_l (g(y) − c_i + c)
    then:                                c_i⁺ = c_i − c + (θ_g − y) / (K η_l)
    server, the accepted S of N:          θ_g ← θ_g + η_g · Σ_{i∈S} (n_i/n) (y_i − θ_g)
                                          c ← c + (1/N) Σ_{i∈S} (c_i⁺ − c_i)

The model's step is the rule below: the paper's mean of the clients' models, weighted by their
examples, which is the paper's uniform mean where clients hold equal shares and is FedAvg's
where they do not (η_g is ``server-learning-rate`` with the part ``server-optimizer``, else
1); c is in ``strategies/scaffold_state.py``. Numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strategies.aggregate import Model, example_weights
from strategies.core.rule import Rule
from strategies.core.update import ClientUpdate, Coefficients

CONTROL = "scaffold-control"  # the record of a train message holding the server's c
VARIATE = "scaffold-variate"  # the client's own state record holding its c_i
CHANGE = "scaffold-variate-change"  # the record of a train reply holding c_i⁺ − c_i


class ScaffoldRule(Rule):
    """SCAFFOLD's model step: the mean of the accepted clients' models, weighted by their
    examples (the paper's clients hold equal shares, where this is its uniform mean)."""

    def coefficients(self, server_round: int, updates: list[ClientUpdate]) -> Coefficients:
        return Coefficients(example_weights([u.num_examples for u in updates]))


def next_control(control: Model, changes: Sequence[Model], total: int) -> Model:
    """``c + (1/N) Σ Δc_i`` over the accepted clients' changes, N = ``total`` clients, summed in
    float64 and kept in ``control``'s dtypes."""
    return [
        (c.astype(np.float64) + sum(d[k].astype(np.float64) for d in changes) / total).astype(
            c.dtype
        )
        for k, c in enumerate(control)
    ]
