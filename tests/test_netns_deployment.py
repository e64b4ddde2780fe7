"""A deployment across separate hosts, simulated with Linux network namespaces.

The commands of docs/deployment.md ("Across machines"), run as they are written:
``scripts/netns_deployment.py up`` puts the SuperLink, two SuperNodes and the flwr CLI in
namespaces of their own, joined by a bridge on 198.51.100.0/24, with TLS for the
SuperLink's address; the app is submitted from the user's namespace; ``down`` stops every
process by PID and deletes the namespaces.
Skipped where namespaces cannot be made (not root, no ``ip``).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from scripts import netns_deployment as nd
from tests.processes import ROOT, TAG_VARIABLE, isolated_env, leftovers
from tests.test_deployment import FAST, history_of, run_to_completion

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def namespaces_possible() -> None:
    reason = nd.unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def env(namespaces_possible: None) -> Iterator[dict[str, str]]:
    with isolated_env() as environment:
        # The script imports the project from this checkout, whatever is installed.
        environment["PYTHONPATH"] = str(ROOT)
        yield environment
        # Before isolated_env stops whatever is left: `down` must have stopped it all.
        assert leftovers(environment[TAG_VARIABLE]) == []


@pytest.fixture
def api() -> str:
    # One half across hosts (about a minute each): the Message API, Flower's current one.
    # Both halves run deployed over TLS on loopback in tests/test_deployment.py.
    return "flower-api='message'"


def script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python scripts/netns_deployment.py ARGS`` from the project root."""
    return subprocess.run(
        [sys.executable, "scripts/netns_deployment.py", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def certificate_addresses(path: Path) -> list[str]:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(address) for address in names.get_values_for_type(x509.IPAddress)]


def test_supernodes_on_other_hosts_train_over_tls(
    tmp_path: Path, env: dict[str, str], api: str, app_copy: Path
) -> None:
    directory = tmp_path / "netns"
    try:
        started = script(env, "up", "--supernodes", "2", "--dir", str(directory))
        assert started.returncode == 0, started.stdout + started.stderr
        deployment = nd.NetnsDeployment.load(directory)
        config = f"num-server-rounds=2 strategy='fedavg' run-name='hosts' {FAST} {api}"
        status = run_to_completion(deployment, env, config, app_copy)
    finally:
        stopped = script(env, "down", "--dir", str(directory))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    made = [*deployment.namespaces.values(), deployment.switch]
    assert len(made) == 5  # SuperLink, 2 SuperNodes, user, switch
    assert set(made).isdisjoint(nd.existing_namespaces())

    # The SuperLink is a host of its own, reached at its address over TLS.
    assert deployment.address == f"198.51.100.1:{nd.PORT}"
    config = tomllib.loads((Path(env["FLWR_HOME"]) / "config.toml").read_text())
    connection = config["superlink"][deployment.connection]
    assert connection == {
        "address": f"198.51.100.1:{nd.PORT}",
        "root-certificates": str(deployment.certificates / "ca.crt"),
    }
    assert "198.51.100.1" in certificate_addresses(deployment.certificates / "server.pem")
    # Each request reached the SuperLink from its own host's address: the two SuperNodes'
    # and the user's (flwr run, flwr list).
    log = (directory / "logs" / "superlink.log").read_text()
    for client in ("198.51.100.11", "198.51.100.12", "198.51.100.100"):
        assert f" {client}:" in log

    assert status == "finished:completed"
    rounds = history_of(deployment, "hosts")["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert [r["accepted"] for r in rounds[1:]] == [2, 2]
    assert [r["failures"] for r in rounds[1:]] == [0, 0]
    # Each SuperNode told the server its partition id, from its --node-config.
    assert [r["sampled_partitions"] for r in rounds[1:]] == [[0, 1]] * 2
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.3
