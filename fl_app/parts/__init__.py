"""The template's optional parts: what each one is, so that a copy can drop it.

A copy that starts its own app keeps the core and deletes what it does not need
(docs/template.md). Each part below is its files (code, tests, scripts) and its
registration: the lines, elsewhere, that end in ``# part: <name>``. Nothing else reaches a
part, so deleting its files and those lines leaves a working app; ``tests/test_slim_copy.py``
deletes every part and runs what remains.

This table stays in the copy: a config key or flag of a part that is gone is then refused
in one line that says so, not taken for a typo.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = "# part: "
_REGISTRATION = re.compile(re.escape(MARKER) + r"([a-z][a-z-]*)$")


@dataclass(frozen=True)
class Part:
    """An optional part.

    summary : what it is, in a few words.
    files : its files and folders, relative to the project root (tests included).
    module : the module whose presence says that this copy has the part ("": nothing
        imports it, e.g. scripts run by hand; then its first file says).
    keys : its config keys (``[tool.flwr.app.config]``, ``--run-config``, flags of
        ``run_simulation.py``).
    flags : its other flags of ``run_simulation.py``.
    """

    summary: str
    files: tuple[str, ...]
    module: str = ""
    keys: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    @property
    def present(self) -> bool:
        if self.module:
            return importlib.util.find_spec(self.module) is not None
        return (ROOT / self.files[0]).exists()


PARTS: dict[str, Part] = {
    "legacy-api": Part(
        "Flower's legacy API half (NumPyClient messages, flwr.server.strategy) with SecAgg+",
        (
            "fl_app/parts/legacy",
            "strategies/legacy.py",
            "strategies/secure.py",
            "tests/legacy_fakes.py",
            "tests/test_legacy.py",
            "tests/test_secure_aggregation.py",
            "tests/test_server_loop.py",
        ),
        module="fl_app.parts.legacy",
        keys=(
            "flower-api",
            "secure-aggregation",
            "secagg-num-shares",
            "secagg-reconstruction-threshold",
            "secagg-max-weight",
            "secagg-clipping-range",
        ),
    ),
    "faults": Part(
        "fault injection: clients that fail, straggle, poison their update or lie",
        (
            "fl_app/parts/faults.py",
            "fl_app/parts/faulty_client.py",
            "tests/test_faults.py",
            "tests/test_robustness.py",
        ),
        module="fl_app.parts.faults",
        keys=("fault-kind", "fault-fraction", "fault-scale", "straggle-seconds"),
    ),
    "dp": Part(
        "differential privacy: central, local and DP-SGD, with their ε accountants",
        (
            "strategies/privacy.py",
            "fl_app/parts/privacy.py",
            "fl_app/parts/private_client.py",
            "tests/test_privacy.py",
        ),
        module="strategies.privacy",
        keys=(
            "dp",
            "dp-noise-multiplier",
            "dp-clipping-norm",
            "dp-delta",
            "dp-clipping",
            "dp-target-quantile",
            "dp-clip-learning-rate",
            "dp-clipped-count-stddev",
        ),
    ),
    "zoo": Part(
        "more datasets (torchvision's, generated, Hugging Face), models and partitioners",
        ("fl_app/parts/zoo.py", "tests/test_zoo.py"),
        module="fl_app.parts.zoo",
        keys=(
            "data-dir",
            "download",
            "shards-per-client",
            "classes-per-client",
            "synthetic-alpha",
            "synthetic-beta",
        ),
    ),
    "tracking": Part(
        "experiment tracking in TensorBoard, MLflow or Weights & Biases",
        ("fl_app/parts/tracking.py", "fl_app/parts/tracking_keys.py", "tests/test_tracking.py"),
        module="fl_app.parts.tracking",
        keys=("tracker",),
    ),
    "flower-baselines": Part(
        "Flower's robust aggregators (flower-krum, flower-median, ...) as baselines",
        (
            "strategies/flower_robust.py",
            "fl_app/parts/baseline_keys.py",
            "tests/test_flower_robust.py",
        ),
        module="strategies.flower_robust",
        keys=("num-malicious-clients", "num-clients-to-keep", "trimmed-beta"),
    ),
    "presets": Part(
        "ready-made scenarios of run_simulation.py --preset",
        ("fl_app/parts/presets.py", "tests/test_presets.py"),
        module="fl_app.parts.presets",
        flags=("--preset",),
    ),
    "ray-cluster": Part(
        "starting Ray nodes and checking a cluster before run_simulation.py --ray-address joins it",
        ("fl_app/parts/ray_cluster.py", "tests/test_ray_cluster.py"),
        module="fl_app.parts.ray_cluster",
    ),
    "benchmarks": Part(
        "scripts that measure aggregation, overhead, peers, privacy, robustness, scale, "
        "deployments, GPUs",
        ("benchmarks", "tests/test_peers.py"),
    ),
    "deployment-scripts": Part(
        "scripts that start a SuperLink and SuperNodes on this machine (TLS, auth, netns, "
        "the warm SuperExec)",
        (
            "scripts",
            "tests/test_deployment.py",
            "tests/test_netns_deployment.py",
            "tests/test_warm_superexec.py",
        ),
    ),
}


def registered_part(line: str) -> str | None:
    """The part that ``line`` registers (it ends in ``# part: <name>``), or None."""
    found = _REGISTRATION.search(line.rstrip())
    return found.group(1) if found else None


def owner(key: str) -> str | None:
    """The part whose config key or flag (without ``--``) ``key`` is, if any."""
    for name, part in PARTS.items():
        if key in part.keys or f"--{key}" in part.flags:
            return name
    return None


def gone(what: str, key: str) -> str | None:
    """One line when ``key`` (a config key, or a flag without ``--``) belongs to a part that
    this copy does not have; None otherwise."""
    name = owner(key)
    if name is None or PARTS[name].present:
        return None
    return (
        f"{what} {key!r} belongs to the optional part {name!r} ({PARTS[name].summary}), "
        "which this copy of the template does not have (see docs/template.md)"
    )


def unknown_key(key: str, known: Iterable[str]) -> str:
    """The line that refuses config key ``key``: a part's that is gone, or a typo."""
    listed = ", ".join(known)
    line = gone("config key", key)
    if line is not None:
        return f"{line}; known keys: {listed}"
    return f"unknown config key {key!r}; known keys: {listed}"


def absent_flag(argv: Sequence[str]) -> str | None:
    """The line for the first flag in ``argv`` (``--key`` of a config key included) of a
    part that this copy does not have, or None."""
    for argument in argv:
        if argument.startswith("--"):
            line = gone("flag", argument[2:].split("=", 1)[0])
            if line is not None:
                return line
    return None
