"""``run_simulation.py --backend``: where the engine runs the clients (the optional part
``fast-engine``); ``auto`` picks the faster one here, with the same results. ``--num-nodes``:
how many virtual nodes serve them (:mod:`fl_app.parts.pools`)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from fl_app.engine.inprocess import RAY, backends
from fl_app.kit.extensions import Extension
from fl_app.kit.keys import ConfigError
from fl_app.kit.simulation import Simulation
from fl_app.parts.pools import AUTO_NODES, PER_CLIENT

AUTO = "auto"
# SecAgg+ keeps each client's protocol state in its node: no pool of nodes under it.  # part: legacy-api
NO_SECURE_POOL = "is not allowed with secure-aggregation = true: SecAgg+ keeps each client's protocol state in its node (use one of auto, per-client)"  # part: legacy-api
# Ray's start (seconds) and its dispatch per message (a few ms more than in this process)
# pay off only with several clients side by side: from this many on (docs/performance.md).
RAY_FROM_WORKERS = 4


class BackendFlags(Extension):
    """``--backend``: Ray actors (Flower's own), this process, or the faster here;
    ``--num-nodes``: a pool of virtual nodes, or one per client."""

    def add_flags(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument(
            "--num-nodes",
            default=AUTO_NODES,
            metavar="N",
            help=f"virtual nodes of Flower's engine: a number (a pool; each message names the "
            f"client it is for), {AUTO_NODES!r} (a pool of the clients a round asks for), or "
            f"{PER_CLIENT!r} (one node per client, as a deployment has)",
        )
        group.add_argument(
            "--backend",
            choices=(AUTO, *backends()),
            default=AUTO,
            help="where Flower's engine runs the clients: Ray actors, in parallel; or this "
            "process, one at a time (no Ray to start: for light workloads and debugging); "
            f"{AUTO!r}: Ray for GPUs, a Ray cluster, stragglers or at least "
            f"{RAY_FROM_WORKERS} clients at a time on this machine's CPUs, else this process",
        )

    def check(self, args: argparse.Namespace, cfg: Any, simulation: Simulation) -> Simulation:
        nodes = args.num_nodes
        if nodes not in (AUTO_NODES, PER_CLIENT) and not (nodes.isdigit() and int(nodes) >= 1):
            raise ConfigError(
                f"--num-nodes {nodes!r} is not allowed: must be a number >= 1, "
                f"{AUTO_NODES!r} or {PER_CLIENT!r}"
            )
        if cfg.secure_aggregation and nodes not in (AUTO_NODES, PER_CLIENT):  # part: legacy-api
            raise ConfigError(f"--num-nodes {nodes} {NO_SECURE_POOL}")  # part: legacy-api
        if args.backend not in (AUTO, RAY) and args.ray_address:  # part: ray-cluster
            raise ConfigError(  # part: ray-cluster
                f"--ray-address {args.ray_address!r} is not allowed with --backend "  # part: ray-cluster
                f"{args.backend}: the clients run in this process (use --backend ray)"  # part: ray-cluster
            )  # part: ray-cluster
        backend = pick_backend(args.backend, cfg, simulation)
        return Simulation(**{**vars(simulation), "backend": backend, "num_nodes": nodes})


def pick_backend(backend: str, cfg: Any, simulation: Simulation) -> str:
    """``backend``, or for :data:`AUTO` the one that runs ``cfg`` faster here.

    Both give the same results bit for bit: this is about time. Ray where clients side by
    side pay for its start and dispatch (at least :data:`RAY_FROM_WORKERS` at a time on
    this machine's CPUs), where only Ray can run them (GPUs, a cluster), and for
    stragglers (in this process a sleeping client holds up every other one); this process
    otherwise.
    """
    if backend != AUTO:
        return backend
    cpus = len(os.sched_getaffinity(0))
    per_client = simulation.num_cpus
    workers = cpus / per_client if per_client > 0 else float(cpus)  # 0: Ray reserves nothing
    side_by_side = workers >= RAY_FROM_WORKERS or simulation.num_gpus > 0
    side_by_side |= cfg.fault_kind == "straggle"  # part: faults
    side_by_side |= bool(simulation.ray_address)  # part: ray-cluster
    return RAY if side_by_side else "inprocess"
