"""A Flower deployment across separate hosts, simulated on this machine with network namespaces.

    python scripts/netns_deployment.py up --supernodes 2          # as root
    python scripts/netns_deployment.py run --run-config "num-server-rounds=2"
    python scripts/netns_deployment.py down

``up`` makes one Linux network namespace per host: the SuperLink (198.51.100.1), SuperNode i
(198.51.100.11+i) and the user who runs ``flwr`` (198.51.100.100), plus a switch namespace
whose bridge joins them: each host has one end of a veth pair (``eth0``, and ``lo`` up, as
Flower's processes also talk to their own subprocesses), the other end is a port of the
bridge. Nothing is configured in the root namespace, so no traffic leaves the
namespaces. Names carry a random suffix (``flnet-<suffix>-superlink``, ...), so runs side by
side and leftovers never collide.

TLS is always on: a CA and a server certificate for 198.51.100.1 (``generate_certs.sh``).
The SuperLink listens on 198.51.100.1 only, the SuperNodes dial it with the CA, and the
connection ``netns-deployment`` in ``$FLWR_HOME/config.toml`` (default ``~/.flwr``) points
the flwr CLI at it; ``run`` (or ``ip netns exec <user namespace> flwr run . netns-deployment``)
submits from the user's namespace. Every program is started with ``ip netns exec NS ...``,
which execs it, in its own session. ``<dir>/deployment.json`` records the namespaces and
PIDs; ``down`` stops those process groups by PID and deletes exactly those namespaces.
Logs: ``<dir>/logs/``; a relative ``output-dir`` of the app lands in ``<dir>/<output-dir>/``.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

if not __package__:  # run as a script: import `scripts.` from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_app.kit.local import flower_env
from scripts import local_deployment as ld

CONNECTION = "netns-deployment"
PREFIX = "flnet"
NETWORK = "198.51.100"  # TEST-NET-2 (RFC 5737): documentation only, never routed
SUPERLINK_ADDRESS = f"{NETWORK}.1"
USER_ADDRESS = f"{NETWORK}.100"
FIRST_SUPERNODE = 11
MAX_SUPERNODES = 100 - FIRST_SUPERNODE
PORT = 9092
BRIDGE = "br0"


def host_address(host: str) -> str:
    """The address of ``host`` (``superlink``, ``supernode_<i>``, ``user``) on the bridge."""
    if host == "superlink":
        return SUPERLINK_ADDRESS
    if host == "user":
        return USER_ADDRESS
    return f"{NETWORK}.{FIRST_SUPERNODE + int(host.removeprefix('supernode_'))}"


@dataclass
class NetnsDeployment(ld.Deployment):
    """A deployment whose hosts are network namespaces (``host -> namespace``)."""

    namespaces: dict[str, str] = field(default_factory=dict)
    switch: str = ""
    ONE_MACHINE: ClassVar[bool] = False  # each SuperNode a host of its own, warm on its own

    def on(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[host]]


def ip(*args: str, namespace: str | None = None) -> None:
    """``ip [-n NAMESPACE] ARGS``; a failure raises with ip's own message."""
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise ld.DeploymentError(f"`{' '.join(command)}` failed: {done.stderr.strip()}")


def existing_namespaces() -> list[str]:
    """The names ``ip netns list`` shows (each line: ``NAME [(id: N)]``)."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def unavailable() -> str | None:
    """Why this machine cannot host the deployment (``None`` if it can).

    Creates a namespace with a veth pair and a bridge in it, then deletes it: the
    steps ``up`` takes, without touching the root namespace.
    """
    if shutil.which("ip") is None:
        return "network namespaces unavailable: no `ip` command (install iproute2)"
    probe = f"{PREFIX}-probe-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
    except ld.DeploymentError as err:
        return f"network namespaces unavailable (root needed): {err}"
    try:
        ip("link", "add", "name", "probe0", "type", "veth", "peer", "name", "probe1",
           namespace=probe)  # fmt: skip
        ip("link", "add", "name", BRIDGE, "type", "bridge", namespace=probe)
    except ld.DeploymentError as err:
        return f"network namespaces unavailable: {err}"
    finally:
        ip("netns", "delete", probe)
    return None


def build_network(deployment: NetnsDeployment) -> None:
    """The switch (a bridge) and one namespace per host, cabled to it by a veth pair."""
    switch = deployment.switch
    ip("netns", "add", switch)
    ip("link", "set", "lo", "up", namespace=switch)
    ip("link", "add", "name", BRIDGE, "type", "bridge", namespace=switch)
    ip("link", "set", BRIDGE, "up", namespace=switch)
    for host, namespace in deployment.namespaces.items():
        ip("netns", "add", namespace)
        # A host's traffic to itself (a SuperNode's ClientApps on 127.0.0.1, the SuperLink's
        # ServerApp runner dialling 198.51.100.1) goes over lo, down in a new namespace.
        ip("link", "set", "lo", "up", namespace=namespace)
        # Made inside the switch, the pair never exists in the root namespace.
        ip("link", "add", "name", host, "type", "veth", "peer", "name", "eth0", "netns", namespace,
           namespace=switch)  # fmt: skip
        ip("link", "set", "dev", host, "master", BRIDGE, "up", namespace=switch)
        ip("addr", "add", f"{host_address(host)}/24", "dev", "eth0", namespace=namespace)
        ip("link", "set", "eth0", "up", namespace=namespace)


def up(
    directory: Path,
    num_supernodes: int,
    *,
    auth: bool = False,
    env: dict[str, str] | None = None,
    connection: str = CONNECTION,
    isolation: str | None = None,
    database: bool = False,
) -> NetnsDeployment:
    """Make the namespaces, start a SuperLink and ``num_supernodes`` SuperNodes in theirs,
    over TLS; register the connection for the user's namespace. ``isolation`` and
    ``database``: as :func:`scripts.local_deployment.up` (each warm SuperExec runs in its
    SuperNode's namespace)."""
    if not 1 <= num_supernodes <= MAX_SUPERNODES:
        raise ld.DeploymentError(f"--supernodes must be in 1..{MAX_SUPERNODES}")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    run = f"{PREFIX}-{secrets.token_hex(3)}"
    hosts = ["superlink", *(f"supernode_{i}" for i in range(num_supernodes)), "user"]
    deployment = NetnsDeployment(
        str(directory),
        f"{SUPERLINK_ADDRESS}:{PORT}",
        connection,
        tls=True,
        auth=auth,
        namespaces={host: f"{run}-{host}" for host in hosts},
        switch=f"{run}-switch",
        isolation=isolation or ld.fastest_isolation(),
        database=database,
    )
    deployment.save()  # before the first namespace: `down` removes what exists of it
    try:
        build_network(deployment)
        ld.start(deployment, num_supernodes, flower_env(env))
    except BaseException:
        down(directory)
        raise
    return deployment


def down(directory: Path) -> NetnsDeployment:
    """Stop the deployment's processes by PID, then delete its namespaces."""
    deployment = NetnsDeployment.load(directory.resolve())
    ld.stop(deployment)
    existing = set(existing_namespaces())
    for namespace in [*deployment.namespaces.values(), deployment.switch]:
        if namespace in existing:
            ip("netns", "delete", namespace)
    return deployment


def main(argv: Sequence[str] | None = None) -> int:
    args = ld.command_parser(__doc__, "netns-deployment").parse_args(argv)
    try:
        if args.command == "up":
            reason = unavailable()
            if reason is not None:
                raise ld.DeploymentError(reason)
            d = up(args.dir, args.supernodes, **ld.up_options(args))
            print(f"SuperLink {d.address} (PID {d.superlink_pid}) in {d.namespaces['superlink']}")
            print(f"ClientApp processes: {d.isolation} ({ld.describe_isolation(d.isolation)})")
            for i, pid in enumerate(d.supernode_pids):
                host = f"supernode_{i}"
                print(f"SuperNode {i} {host_address(host)} (PID {pid}) in {d.namespaces[host]}")
            print(
                f"connection '{d.connection}' registered in "
                f"{ld.flwr_home(flower_env()) / 'config.toml'}; submit from the user's host:\n"
                f"  ip netns exec {d.namespaces['user']} flwr run . {d.connection}"
            )
        elif args.command == "down":
            d = down(args.dir)
            print(
                f"stopped SuperLink {d.superlink_pid} and SuperNodes {d.supernode_pids}; "
                f"deleted namespaces {d.switch.removesuffix('-switch')}-*"
            )
        elif args.command == "restart-superlink":
            d = NetnsDeployment.load(args.dir.resolve())
            ld.restart_superlink(d)
            print(ld.describe_restart(d))
        else:
            return ld.run_app(NetnsDeployment.load(args.dir.resolve()), args.app, args.run_config)
    except ld.DeploymentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
