"""Flower's commands on this machine: free loopback ports and the environment they run in."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr of this venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: no telemetry, no runtime dependency install (the
    SuperLink would `uv sync` the app: a CUDA torch)."""
    env = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    env |= os.environ if base is None else base
    path = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env | {"FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PATH": path}
