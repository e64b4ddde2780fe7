"""The config keys of the optional part ``flower-baselines`` (Flower's robust aggregators,
:mod:`strategies.flower_robust`), with Flower's defaults.

``RunConfig`` inherits :class:`BaselineKeys`: with the two lines marked
``# part: flower-baselines`` in ``strategies/__init__.py``, that is the part's only
registration (docs/template.md).
"""

from __future__ import annotations

from fl_app.kit.keys import keys, option


@keys
class BaselineKeys:
    num_malicious_clients: int = option(
        "flower-krum, -multikrum, -bulyan: attackers f assumed per round",
        at_least=0,
    )
    num_clients_to_keep: int = option(
        "flower-multikrum: updates averaged (0: clients − f)",
        at_least=0,
    )
    trimmed_beta: float = option(
        "flower-trimmed-mean: share cut at each end of every coordinate",
        at_least=0,
        below=0.5,
    )
