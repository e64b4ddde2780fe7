"""Which rules can run under Flower's SecAgg+, and with what client weight (the optional
part ``legacy-api``, where SecAgg+ runs). No Flower.

Under SecAgg+ the server sees only the sum of the clients' weighted models, divided by the
sum of their weights: a rule qualifies when each client can weigh itself, knowing nothing
of the others.
"""

from __future__ import annotations

from strategies.core.options import ServerOptions
from strategies.core.rule import Rule
from strategies.fedavg import FedAvgRule
from strategies.hybrid import HybridOptions, HybridRule
from strategies.simple_average import SimpleAverageRule


def secure_weight(rule_type: type[Rule], options: ServerOptions) -> str | None:
    """The weight each client sends when only the masked sum reaches the server:
    "examples" (each client's n_i), "one" (the same for every client), or None when the
    rule needs the individual updates."""
    if issubclass(rule_type, HybridRule):  # FedAvg exactly: λ = 1 in every round, unfiltered
        assert isinstance(options, HybridOptions)
        rounds = range(1, options.num_server_rounds + 1)
        fedavg = all(options.lambda_at(r) == 1.0 for r in rounds)
        fedavg &= options.robust_filter == "none"  # part: robust
        return "examples" if fedavg else None
    if issubclass(rule_type, FedAvgRule):
        return "examples"
    if issubclass(rule_type, SimpleAverageRule):
        return "one"
    return None


def secure_aggregation_problem(rule: Rule) -> str | None:
    """Why ``rule`` cannot run under SecAgg+ (None: it can)."""
    if rule.options.dp == "central":  # part: dp
        return "central DP clips each update, and SecAgg+ shows the server only their sum: use dp = local or dp-sgd (the clients privatize) or none"  # part: dp
    if secure_weight(type(rule), rule.options) is None:
        return (
            f"{type(rule).__name__} weighs, scores or filters each update with these options, "
            "and SecAgg+ shows the server only the weighted sum: use simple, fedavg, "
            "or hybrid with hybrid-lambda = 1"
            " and robust-filter = none"  # part: robust
        )
    return None
