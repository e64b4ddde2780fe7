"""The config keys of the legacy half and of SecAgg+, and their rules across keys.

No Flower: the config imports this module.
"""

from __future__ import annotations

from typing import Any

import strategies
from fl_app.kit.keys import fail, keys, option
from strategies.secure import secure_aggregation_problem

# The Flower API halves the server can run (the Message API is the core's).
FLOWER_APIS = ("message", "legacy")
# SecAgg+ sums values quantized to 2^22 levels modulo 2^32 (Flower's defaults): at most
# 2^10 clients a round before the sum wraps.
SECAGG_MAX_CLIENTS = 1024
# Faults a SecAgg+ run can show: a client that fails or is late, nothing inside the sum.  # part: faults
SECURE_FAULTS = ("none", "raise", "straggle")  # part: faults
NO_POISON = f"one of {', '.join(SECURE_FAULTS)} with secure-aggregation = true (a poisoned update inside the masked sum cannot be rejected, and may break the protocol)"  # part: faults


@keys
class LegacyKeys:
    """Which Flower API half runs, and Flower's SecAgg+ (legacy half only)."""

    flower_api: str = option(
        "Flower API half the server runs: legacy (flwr.server.strategy, NumPyClient "
        "messages) or message (flwr.serverapp.strategy, ArrayRecord messages)",
        choices=FLOWER_APIS,
    )
    secure_aggregation: bool = option(
        "run training rounds through Flower's SecAgg+ (the server sees only the sum of the "
        "clients' weighted models): legacy flower-api; simple, fedavg, or hybrid "
        "with hybrid-lambda 1"
        " and no robust filter",  # part: robust
    )
    secagg_num_shares: int = option(
        "SecAgg+: shares each client's secret is split into (its neighbours + 1)", at_least=3
    )
    secagg_reconstruction_threshold: int = option(
        "SecAgg+: shares that recover a dropped client's secret", at_least=2
    )
    secagg_max_weight: float = option(
        "SecAgg+: the largest client weight (num_examples for fedavg): larger ones overflow, "
        "so such a client fails instead",
        at_least=1,
    )
    secagg_clipping_range: float = option(
        "SecAgg+: model values are quantized in [-r, r]; a client whose model leaves it fails",
        above=0,
    )

    def check(self) -> None:
        super().check()  # type: ignore[misc]
        cfg: Any = self  # the whole RunConfig
        if not cfg.secure_aggregation:
            return
        if cfg.flower_api != "legacy":
            fail(
                "flower-api",
                cfg.flower_api,
                "legacy with secure-aggregation = true (Flower has SecAgg+ for the "
                "legacy API only)",
            )
        if cfg.secagg_reconstruction_threshold >= cfg.secagg_num_shares:
            fail(
                "secagg-reconstruction-threshold",
                cfg.secagg_reconstruction_threshold,
                f"less than secagg-num-shares ({cfg.secagg_num_shares})",
            )
        if cfg.min_fit_clients < 2:
            fail(
                "min-fit-clients",
                cfg.min_fit_clients,
                ">= 2 with secure-aggregation = true (SecAgg+ masks pairs of clients)",
            )
        fault_kind = getattr(self, "fault_kind", "none")  # part: faults
        if fault_kind not in SECURE_FAULTS:  # part: faults
            fail("fault-kind", fault_kind, NO_POISON)  # part: faults
        rule_type = strategies.rule_type(cfg.strategy)
        rule = rule_type(rule_type.Options.from_config(self))
        problem = secure_aggregation_problem(rule)
        if problem is not None:
            fail("secure-aggregation", True, f"false with strategy {cfg.strategy!r}: {problem}")
        sampled = cfg.fit_clients(cfg.num_clients)
        if sampled > SECAGG_MAX_CLIENTS:
            fail(
                "num-clients",
                cfg.num_clients,
                f"a number whose fraction-fit = {cfg.fraction_fit:g} samples at most "
                f"{SECAGG_MAX_CLIENTS} clients a round with secure-aggregation = true ({sampled} "
                "now; more overflow SecAgg+'s 32-bit masked sum)",
            )
