"""Flower's commands on this machine: free loopback ports and the environment they run in."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr of this venv


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: no runtime dependency install, no telemetry."""
    env = dict(os.environ if base is None else base)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    # Otherwise the SuperLink runs `uv sync` for the app and downloads a CUDA torch.
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    # Flower's SuperExec asks its SuperNode or SuperLink for a new task every 1 s by default.
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.05")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env
