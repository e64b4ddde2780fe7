"""Start and stop a real Flower deployment on this machine: one SuperLink, N SuperNodes.

    python scripts/local_deployment.py up --supernodes 3 [--tls] [--auth]
    flwr run . local-deployment --stream
    python scripts/local_deployment.py restart-superlink    # after a SuperLink crash
    python scripts/local_deployment.py down

``up`` starts ``flower-superlink`` and ``flower-supernode`` processes (each SuperNode with
``--node-config "partition-id=i num-partitions=N"``), registers the SuperLink as the
connection ``local-deployment`` in ``$FLWR_HOME/config.toml`` (default ``~/.flwr``), and
records every PID in ``<dir>/deployment.json``; ``down`` stops them all by PID. With
``--tls`` it makes a CA and server certificate (``scripts/generate_certs.sh``); with
``--auth`` (implies TLS) each SuperNode gets an EC key pair and is registered with
``flwr supernode register`` before it starts, and the SuperLink refuses unknown nodes.
The SuperLink runs in ``<dir>``, so a relative ``output-dir`` of the app lands in
``<dir>/<output-dir>/<run-name>/``. Logs: ``<dir>/logs/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import tomli_w

from fl_app.kit.local import BIN, flower_env, free_port

SCRIPTS = Path(__file__).resolve().parent
STATE_FILE = "deployment.json"
CONNECTION = "local-deployment"
# The Unix socket of the warm parent, in the deployment's folder (every process's cwd).
WARM_PARENT = "warm-parent.sock"
# How a SuperNode starts the ClientApp process of each message: "subprocess" is Flower's
# default (SuperNode's own flower-superexec starts a fresh flwr-clientapp); "warm" runs
# the SuperNode with --isolation process beside scripts/warm_superexec.py, which forks
# each flwr-clientapp from a parent that has already imported Flower, torch and the app.
ISOLATIONS = ("warm", "subprocess")


class DeploymentError(RuntimeError):
    """A process of the deployment did not come up, or a run did not finish."""


def flwr_home(env: dict[str, str]) -> Path:
    return Path(env.get("FLWR_HOME", "~/.flwr")).expanduser()


@dataclass
class Deployment:
    """What ``up`` started: enough for ``down`` (another process) to stop it by PID."""

    directory: str
    address: str
    connection: str
    tls: bool
    auth: bool
    superlink_pid: int = 0
    supernode_pids: list[int] = field(default_factory=list)
    # How the SuperNodes start their ClientApp processes (ISOLATIONS), and the warm
    # SuperExec beside each SuperNode under "warm", with the warm parent they all share.
    isolation: str = "subprocess"
    superexec_pids: list[int] = field(default_factory=list)
    warm_parent_pid: int = 0
    # The SuperLink's state in <dir>/state.db (a restarted SuperLink finds the runs it lost
    # there) instead of Flower's in-memory default.
    database: bool = False
    # Whether every process runs on this machine (a shared warm parent serves them all).
    ONE_MACHINE: ClassVar[bool] = True

    @property
    def certificates(self) -> Path:
        return Path(self.directory) / "certificates"

    @property
    def superlink_host(self) -> str:
        return self.address.rpartition(":")[0]

    @property
    def superlink_port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def on(self, host: str) -> list[str]:
        """The command prefix that runs a program on ``host``: ``superlink``,
        ``supernode_<i>`` or ``user`` (where the flwr CLI runs). Here all of them are this
        machine; a deployment over several (simulated) hosts overrides it."""
        return []

    def save(self) -> None:
        (Path(self.directory) / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> Self:
        path = directory / STATE_FILE
        if not path.is_file():
            raise DeploymentError(f"no deployment recorded in {path}")
        return cls(**json.loads(path.read_text()))


def spawn(command: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session, so stopping its group stops its app processes too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def _port_open(host: str, port: int, on: Sequence[str]) -> bool:
    """Whether ``host:port`` accepts a connection, seen from where the prefix ``on`` runs."""
    if not on:
        with socket.socket() as s:
            return s.connect_ex((host, port)) == 0
    probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)"
    done = subprocess.run(
        [*on, sys.executable, "-I", "-S", "-c", probe, host, str(port)], capture_output=True
    )
    return done.returncode == 0


def _wait_for_port(
    port: int,
    process: subprocess.Popen[bytes],
    log: Path,
    timeout: float = 60.0,
    host: str = "127.0.0.1",
    on: Sequence[str] = (),
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeploymentError(f"{log.stem} exited with code {process.returncode}; see {log}")
        if _port_open(host, port, on):
            return
        time.sleep(0.2)
    raise DeploymentError(f"nothing listens on {host}:{port} after {timeout:.0f} s; see {log}")


def register_connection(
    env: dict[str, str], name: str, address: str, ca_certificate: Path | None
) -> None:
    """Add (or replace) ``[superlink.<name>]`` in ``$FLWR_HOME/config.toml``."""
    path = flwr_home(env) / "config.toml"
    if not path.is_file():  # let flwr write its defaults (the `local` simulation connection)
        subprocess.run(
            [str(BIN / "flwr"), "config", "list"], env=env, capture_output=True, check=True
        )
    config: dict[str, Any] = tomllib.loads(path.read_text())
    entry: dict[str, Any] = {"address": address}
    if ca_certificate is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(ca_certificate)
    config.setdefault("superlink", {})[name] = entry
    path.write_text(tomli_w.dumps(config))


def make_node_key(path: Path) -> Path:
    """An EC P-384 key pair in OpenSSH format (what SuperNode authentication expects)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = path.with_suffix(".pub")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return public


def flwr(
    env: dict[str, str],
    *args: str,
    cwd: Path | None = None,
    timeout: float = 120,
    on: Sequence[str] = (),
) -> dict[str, Any]:
    """Run a ``flwr`` CLI command (behind the prefix ``on``) with ``--format json`` and
    return its JSON answer."""
    done = subprocess.run(
        [*on, str(BIN / "flwr"), *args, "--format", "json"],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    try:
        answer: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise DeploymentError(
            f"flwr {' '.join(args)} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        ) from err
    if not answer.get("success", False):
        raise DeploymentError(f"flwr {' '.join(args)} failed: {answer}")
    return answer


def fastest_isolation() -> str:
    """``warm`` where a process can fork (the warm SuperExec needs it), else Flower's own."""
    return "warm" if hasattr(os, "fork") else "subprocess"


def describe_isolation(isolation: str) -> str:
    if isolation == "warm":
        return "--isolation process, forked warm by scripts/warm_superexec.py"
    return "Flower's default: a fresh flwr-clientapp process per message"


def launch_supernode(
    deployment: Deployment, partition_id: int, num_partitions: int, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], int]:
    """Start SuperNode ``partition_id`` (with its key when authentication is on); return its
    process and the port of its Runtime API, which listens once it is up."""
    directory = Path(deployment.directory)
    host = f"supernode_{partition_id}"
    port = free_port()
    node_config = f"partition-id={partition_id} num-partitions={num_partitions}"
    node_config += f" client-state-dir='{directory / host / 'client-state'}'"  # part: client-state
    command = [
        str(BIN / "flower-supernode"),
        "--superlink", deployment.address,
        "--port", str(port),
        "--node-config", node_config,
        "--isolation", "process" if deployment.isolation == "warm" else "subprocess",
    ]  # fmt: skip
    if deployment.tls:
        command += ["--root-certificates", str(deployment.certificates / "ca.crt")]
    else:
        command += ["--insecure"]
    if deployment.auth:
        key = directory / "keys" / f"supernode_{partition_id}"
        public = make_node_key(key)
        flwr(
            env, "supernode", "register", str(public), deployment.connection,
            on=deployment.on("user"),
        )  # fmt: skip
        command += ["--auth-supernode-private-key", str(key)]
    log = directory / "logs" / f"{host}.log"
    return spawn([*deployment.on(host), *command], log, env, directory), port


def start_superexec(
    deployment: Deployment,
    partition_id: int,
    supernode: subprocess.Popen[bytes],
    port: int,
    env: dict[str, str],
) -> None:
    """Wait for SuperNode ``partition_id`` to listen on ``port``; under ``isolation = "warm"``,
    start its warm SuperExec (Flower's own SuperExec runs inside the SuperNode otherwise)."""
    directory = Path(deployment.directory)
    host = f"supernode_{partition_id}"
    log = directory / "logs" / f"{host}.log"
    _wait_for_port(port, supernode, log, timeout=180, on=deployment.on(host))
    if deployment.isolation != "warm":
        return
    # Its Runtime API is on the SuperNode's own loopback, without TLS.
    superexec = [
        sys.executable, str(SCRIPTS / "warm_superexec.py"),
        "--runtime-api-address", f"127.0.0.1:{port}", "--insecure",
        "--parent-pid", str(supernode.pid),
    ]  # fmt: skip
    if deployment.warm_parent_pid:
        superexec += ["--warm-parent", WARM_PARENT]
    log = directory / "logs" / f"{host}-superexec.log"
    deployment.superexec_pids.append(
        spawn([*deployment.on(host), *superexec], log, env, directory).pid
    )


def start_superlink(deployment: Deployment, env: dict[str, str]) -> None:
    """Start the SuperLink of ``deployment`` on ``deployment.address``, with its state in
    ``<dir>/state.db`` if ``deployment.database`` (a restart finds the runs there), else in
    memory; register the connection."""
    directory = Path(deployment.directory)
    host, port = deployment.superlink_host, deployment.superlink_port
    command = [
        str(BIN / "flower-superlink"),
        "--host", host,
        "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    if deployment.database:
        command += ["--database", str(directory / "state.db")]
    if deployment.tls:
        certs = deployment.certificates
        if not (certs / "ca.crt").is_file():
            # The certificate must name the address SuperNodes and the flwr CLI dial.
            names = [] if host in ("127.0.0.1", "localhost") else [host]
            subprocess.run(
                ["bash", str(SCRIPTS / "generate_certs.sh"), str(certs), *names],
                check=True, capture_output=True,
            )  # fmt: skip
        command += [
            "--ssl-ca-certfile", str(certs / "ca.crt"),
            "--ssl-certfile", str(certs / "server.pem"),
            "--ssl-keyfile", str(certs / "server.key"),
        ]  # fmt: skip
    else:
        command += ["--insecure"]
    if deployment.auth:
        command += ["--enable-supernode-auth"]
    log = directory / "logs" / "superlink.log"
    superlink = spawn([*deployment.on("superlink"), *command], log, env, directory)
    deployment.superlink_pid = superlink.pid
    deployment.save()
    # Reachable from where the flwr CLI runs, not only from the SuperLink's own host.
    _wait_for_port(port, superlink, log, host=host, on=deployment.on("user"))
    register_connection(
        env,
        deployment.connection,
        deployment.address,
        deployment.certificates / "ca.crt" if deployment.tls else None,
    )


def restart_superlink(deployment: Deployment, env: dict[str, str] | None = None) -> None:
    """Start the SuperLink again, as after a crash: same address, same ``state.db`` if it has
    one; a run it lost is continued with ``resume-from``. The SuperNodes reconnect by
    themselves to a SuperLink on its database. One without has forgotten them, and they do
    not register again (Flower answers their requests 401): they are restarted too."""
    env = flower_env(env)
    stop_process_group(deployment.superlink_pid)  # if some of it is still there
    supernodes = len(deployment.supernode_pids)
    if not deployment.database:
        for pid in [*deployment.superexec_pids, *deployment.supernode_pids]:
            stop_process_group(pid)
    start_superlink(deployment, env)
    if not deployment.database:
        deployment.superexec_pids, deployment.supernode_pids = [], []
        start_supernodes(deployment, supernodes, env)


def start_warm_parent(deployment: Deployment, env: dict[str, str], timeout: float = 60) -> None:
    """One warm parent for the SuperExecs of every SuperNode here: the imports of Flower, torch
    and the app are held once on this machine instead of once per SuperNode."""
    directory = Path(deployment.directory)
    command = [sys.executable, str(SCRIPTS / "warm_superexec.py"), "--serve", WARM_PARENT]
    log = directory / "logs" / "warm-parent.log"
    process = spawn(command, log, env, directory)
    deployment.warm_parent_pid = process.pid
    deployment.save()
    deadline = time.monotonic() + timeout
    while not (directory / WARM_PARENT).is_socket():  # it listens before it warms up
        if process.poll() is not None or time.monotonic() > deadline:
            raise DeploymentError(f"the warm parent did not start; see {log}")
        time.sleep(0.05)


def describe_restart(deployment: Deployment) -> str:
    state = "on its state.db" if deployment.database else "with a new state in memory"
    return f"SuperLink {deployment.address} (PID {deployment.superlink_pid}) restarted {state}"


def start(deployment: Deployment, num_supernodes: int, env: dict[str, str]) -> None:
    """Start the SuperLink of ``deployment`` and ``num_supernodes`` SuperNodes (each where
    ``deployment.on`` puts it); register the connection.

    The state file is written before the first process starts and after each one, so
    ``down`` can stop what was started even when this fails half-way.
    """
    Path(deployment.directory).mkdir(parents=True, exist_ok=True)
    deployment.save()
    start_superlink(deployment, env)
    if deployment.isolation == "warm" and deployment.ONE_MACHINE:
        start_warm_parent(deployment, env)
    start_supernodes(deployment, num_supernodes, env)


def start_supernodes(deployment: Deployment, num_supernodes: int, env: dict[str, str]) -> None:
    """Start SuperNodes 0..``num_supernodes``-1 (and their warm SuperExecs), recording each."""
    # All SuperNodes start side by side (each a Python importing Flower, CPU-bound): on a
    # small machine the start-up of N nodes one after the other is N times the slowest.
    supernodes = []
    for partition_id in range(num_supernodes):
        process, port = launch_supernode(deployment, partition_id, num_supernodes, env)
        supernodes.append((process, port))
        deployment.supernode_pids.append(process.pid)
        deployment.save()
    for partition_id, (process, port) in enumerate(supernodes):
        start_superexec(deployment, partition_id, process, port, env)
        deployment.save()


def up(
    directory: Path,
    num_supernodes: int,
    *,
    tls: bool = False,
    auth: bool = False,
    env: dict[str, str] | None = None,
    connection: str = CONNECTION,
    isolation: str | None = None,
    database: bool = False,
) -> Deployment:
    """Start a SuperLink and ``num_supernodes`` SuperNodes on loopback; register the
    connection. ``isolation``: one of ISOLATIONS (None: the fastest that works here);
    ``database``: the SuperLink's state in ``<dir>/state.db``, not in memory."""
    directory = directory.resolve()
    deployment = Deployment(
        str(directory),
        f"127.0.0.1:{free_port()}",
        connection,
        tls=tls or auth,
        auth=auth,
        isolation=isolation or fastest_isolation(),
        database=database,
    )
    try:
        start(deployment, num_supernodes, flower_env(env))
    except BaseException:
        down(directory)
        raise
    return deployment


def stop_process_group(pid: int, grace_seconds: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if still there after the grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            _reap(pid)
            time.sleep(0.1)


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own child (so it does not linger as a zombie)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(deployment: Deployment) -> None:
    """Stop every process of ``deployment`` by PID, SuperExecs and SuperNodes first."""
    for pid in [
        *deployment.superexec_pids,
        *deployment.supernode_pids,
        deployment.warm_parent_pid,
        deployment.superlink_pid,
    ]:
        if pid:
            stop_process_group(pid)


def down(directory: Path) -> Deployment:
    """Stop every process of the deployment recorded in ``directory``."""
    deployment = Deployment.load(directory.resolve())
    stop(deployment)
    return deployment


def submit(
    deployment: Deployment, app: Path, run_config: str, env: dict[str, str] | None = None
) -> str:
    """``flwr run APP CONNECTION --run-config ...``; return the run id."""
    args = ["run", str(app), deployment.connection]
    if run_config:
        args += ["--run-config", run_config]
    return str(flwr(flower_env(env), *args, on=deployment.on("user"))["run-id"])


def wait_for_run(
    deployment: Deployment, run_id: str, env: dict[str, str] | None = None, timeout: float = 600
) -> str:
    """Wait until the run is finished; return its status. A SuperLink that cannot be reached
    is asked again (it may be restarting) until ``timeout``.

    ``flwr run`` returns once the run is submitted (and exits 0 even for a run that
    fails), so the run's own status is what tells how it ended. One ``flwr log --stream``
    waits for the end (the SuperLink closes the stream when the run finishes); polling
    ``flwr list`` instead would start a CLI process every few seconds, each a second or more
    of CPU taken from the deployment on a small machine.
    """
    env = flower_env(env)
    on = deployment.on("user")
    deadline = time.monotonic() + timeout
    unreachable: DeploymentError | None = None
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):  # then the deadline has passed
            subprocess.run(
                [*on, str(BIN / "flwr"), "log", run_id, deployment.connection, "--stream"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=left,
            )  # fmt: skip
        try:
            runs = flwr(env, "list", deployment.connection, "--run-id", run_id, on=on)["runs"]
        except DeploymentError as err:  # e.g. "Connection to the SuperLink is unavailable"
            unreachable = err
        else:
            unreachable, status = None, str(runs[0]["status"])
            if status.startswith("finished"):
                return status
        time.sleep(2)
    why = f"; the SuperLink was unreachable: {unreachable}" if unreachable else ""
    raise DeploymentError(f"run {run_id} did not finish within {timeout:.0f} s{why}")


def run_app(deployment: Deployment, app: Path, run_config: str) -> int:
    """``run`` of the command line: submit, wait, say how it ended; 0 if it completed."""
    run_id = submit(deployment, app.resolve(), run_config)
    cli = " ".join([*deployment.on("user"), "flwr"])
    print(f"run {run_id} submitted; waiting ({cli} log {run_id} {deployment.connection} --show)")
    status = wait_for_run(deployment, run_id)
    print(f"run {run_id}: {status}")
    return 0 if status == "finished:completed" else 1


def command_parser(doc: str | None, directory: str) -> argparse.ArgumentParser:
    """The ``up`` / ``down`` / ``run`` command line both deployment scripts share."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("up", "down", "run", "restart-superlink"))
    parser.add_argument(
        "--dir", type=Path, default=Path(directory), help="state, logs, certificates, keys"
    )
    parser.add_argument("--supernodes", type=int, default=2, help="up: number of SuperNodes")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="up: SuperNode authentication (keys registered; implies TLS)",
    )
    parser.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        default=None,
        help="up: how SuperNodes start ClientApp processes (default: warm where it works)",
    )
    parser.add_argument(
        "--database",
        action="store_true",
        help="up: the SuperLink's state in <dir>/state.db, not in memory (a restarted "
        "SuperLink then marks the run it lost as failed; SQLite may answer 'database is "
        "locked' to many SuperNodes on a small machine: docs/deployment.md)",
    )
    parser.add_argument("--app", type=Path, default=Path("."), help="run: the app folder")
    parser.add_argument(
        "--run-config", default="", help="run: e.g. \"num-server-rounds=3 strategy='hybrid'\""
    )
    return parser


def up_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``up`` that both deployment scripts take from ``command_parser``."""
    return {"auth": args.auth, "isolation": args.isolation, "database": args.database}


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(__doc__, "deployment")
    parser.add_argument("--tls", action="store_true", help="up: TLS with a generated CA")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            d = up(args.dir, args.supernodes, tls=args.tls, **up_options(args))
            print(
                f"SuperLink {d.address} (PID {d.superlink_pid}), SuperNodes PIDs {d.supernode_pids}"
            )
            print(f"ClientApp processes: {d.isolation} ({describe_isolation(d.isolation)})")
            print(
                f"connection '{d.connection}' registered in {flwr_home(flower_env()) / 'config.toml'}"
            )
        elif args.command == "down":
            d = down(args.dir)
            print(f"stopped SuperLink {d.superlink_pid} and SuperNodes {d.supernode_pids}")
        elif args.command == "restart-superlink":
            d = Deployment.load(args.dir.resolve())
            restart_superlink(d)
            print(describe_restart(d))
        else:
            return run_app(Deployment.load(args.dir.resolve()), args.app, args.run_config)
    except DeploymentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
