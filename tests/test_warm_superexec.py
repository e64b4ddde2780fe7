"""The warm SuperExec's pieces: what its parent keeps imported, and how tasks reach it.

End to end it runs in every deployment test (``scripts/local_deployment.py`` starts it
beside each SuperNode wherever a process can fork).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from scripts import warm_superexec
from tests.processes import ROOT

# In a fresh interpreter (warm_up changes sys.modules): warm up, then load the ClientApp
# the way Flower's flwr-clientapp does, from an installed FAB that differs from the project.
PROBE = """
import json, sys
from pathlib import Path
sys.path.insert(0, "scripts")
import warm_superexec as w
dropped = w.warm_up(w.default_app(), w.ROOT)
from flwr.supercore.inflatable import inflatable_utils
from flwr.supercore.object_ref import load_app
app = load_app("fl_app.client_app:app", ImportError, Path(sys.argv[1]))
module = sys.modules["fl_app.client_app"]
print(json.dumps({
    "dropped": dropped,
    "kept": [m for m in ("torch", "torch._dynamo", "flwr.supernode.cli.flwr_clientapp")
             if m in sys.modules],
    "loaded_from": module.__file__,
    "marker": getattr(module, "FAB_MARKER", None),
    "first_retry": inflatable_utils.pull_objects.__kwdefaults__["initial_backoff"],
}))
"""


def test_the_warm_parent_keeps_the_libraries_and_each_task_loads_the_fabs_app(
    tmp_path: Path,
) -> None:
    fab = tmp_path / "fab"
    for package in ("fl_app", "strategies"):
        shutil.copytree(ROOT / package, fab / package)
    client = fab / "fl_app" / "client_app.py"
    client.write_text(client.read_text() + "\nFAB_MARKER = 'resubmitted'\n")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(fab)], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    # The project's own modules are forgotten; Flower, torch and torch._dynamo stay warm.
    assert {"fl_app.client_app", "fl_app.task", "strategies.core"} <= set(seen["dropped"])
    assert not any(name.split(".")[0] in ("torch", "flwr") for name in seen["dropped"])
    assert seen["kept"] == ["torch", "torch._dynamo", "flwr.supernode.cli.flwr_clientapp"]
    # A task imports the app the SuperNode installed, not the copy the parent warmed up on.
    assert Path(seen["loaded_from"]).is_relative_to(fab)
    assert seen["marker"] == "resubmitted"
    assert seen["first_retry"] == warm_superexec.FIRST_RETRY


class RealSubprocess:
    DEVNULL = subprocess.DEVNULL

    def __init__(self) -> None:
        self.started: list[list[str]] = []

    def Popen(self, args: list[str], stdout: Any = None, stderr: Any = None) -> str:  # noqa: N802
        self.started.append(args)
        return "real process"


def test_clientapp_commands_go_to_the_warm_parent_and_others_start_as_before() -> None:
    requests, real = io.StringIO(), RealSubprocess()
    popen = warm_superexec.WarmPopen(requests, real)
    task = ["flwr-clientapp", "--runtime-api-address", "127.0.0.1:9094", "--token", "t"]
    popen.Popen(task, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    popen.Popen([*task, "--insecure"])
    assert popen.Popen(["flwr-serverapp", "--token", "t"]) == "real process"
    sent = [json.loads(line) for line in requests.getvalue().splitlines()]
    assert sent == [
        {"arguments": task[1:], "quiet": True},
        {"arguments": [*task[1:], "--insecure"], "quiet": False},
    ]
    assert real.started == [["flwr-serverapp", "--token", "t"]]
