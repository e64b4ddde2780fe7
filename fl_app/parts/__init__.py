"""The template's optional parts: what each one is, so that a new app can leave it out.

``python -m fl_app.new`` makes an app of the core and the parts named (docs/template.md).
Each part below is its files (code, tests, scripts) and its registration: the lines,
elsewhere, that end in ``# part: <name>``. Nothing else reaches a part, so an app without
its files and those lines works; its tests prove it (tests/test_new.py).
"""

from __future__ import annotations

import importlib.util
import re
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
    requires : the parts it builds on.
    words : what names it in prose: an app without the part holds none of these (nor its
        keys, flags and modules) in any file (tests/test_parts.py).
    """

    summary: str
    files: tuple[str, ...]
    module: str = ""
    keys: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    words: tuple[str, ...] = ()

    @property
    def present(self) -> bool:
        if self.module:
            return importlib.util.find_spec(self.module) is not None
        return (ROOT / self.files[0]).exists()


PARTS: dict[str, Part] = {
    "comparisons": Part(
        "several strategies and seeds in one engine start: mean ± std, 95 % intervals, "
        "paired tests, the centralized reference",
        (
            "fl_app/parts/comparisons.py",
            "fl_app/parts/statistics.py",
            "fl_app/parts/centralized.py",
            "tests/test_comparison.py",
            "tests/test_centralized.py",
        ),
        module="fl_app.parts.comparisons",
        flags=("--compare", "--seeds", "--num-seeds", "--target-accuracy"),
        requires=("cli-extensions", "plots"),
        words=("comparison", "comparisons", "centralized", "sweep"),
    ),
    "fast-engine": Part(
        "the clients in this process, and waits for what Flower's engine stores instead of "
        "polling (same results, faster); it also serves many clients from a pool of virtual "
        "nodes",
        (
            "fl_app/engine/inprocess.py",
            "fl_app/engine/arrivals.py",
            "fl_app/engine/polled.py",
            "fl_app/parts/backend_flags.py",
            "fl_app/parts/pools.py",
            "strategies/pools.py",
            "tests/test_inprocess.py",
            "tests/test_arrivals.py",
            "tests/test_pools.py",
        ),
        module="fl_app.engine.inprocess",
        flags=("--backend", "--num-nodes"),
        requires=("cli-extensions",),
        words=(
            "inprocess",
            "in-process backend",
            "arrivals",
            "polled",
            "event-driven",
            "pool of nodes",
            "pool of virtual nodes",
            "num_nodes",
            "PooledMessages",
            "PooledProxies",
            "PartitionProxy",
        ),
    ),
    "legacy-api": Part(
        "Flower's legacy API half (NumPyClient messages, flwr.server.strategy) with SecAgg+",
        (
            "fl_app/parts/legacy",
            "strategies/legacy.py",
            "strategies/secure.py",
            "tests/legacy_fakes.py",
            "tests/legacy_apps.py",
            "tests/test_legacy.py",
            "tests/test_legacy_sampling.py",
            "tests/test_secure_aggregation.py",
            "tests/test_server_loop.py",
            "tests/test_flower_legacy_fedavg.py",
            "tests/test_flower_legacy_fedavg_on_every_rule.py",
            "tests/test_flower_legacy_fedavgm.py",  # also server-optimizer's: needs both
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
        words=("legacy", "SecAgg", "SecAgg+", "secure aggregation", "flwr.server.strategy"),
        requires=("client-wrappers",),
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
        words=("fault", "faults", "poison", "poisoned", "straggle", "straggler", "faulty"),
        requires=("client-wrappers",),
    ),
    "dp": Part(
        "differential privacy: central, local and DP-SGD, with their ε accountants",
        (
            "strategies/privacy.py",
            "strategies/accounting.py",
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
        words=("dp", "DP", "privacy", "DP-SGD", "Opacus", "epsilon", "ε", "accountant"),
        requires=("client-wrappers",),
    ),
    "server-optimizer": Part(
        "the server's optimizer step on the aggregate: FedAvgM, FedAdagrad, FedAdam, FedYogi",
        (
            "strategies/server_optimizer.py",
            "fl_app/parts/server_optimizer_keys.py",
            "tests/test_server_optimizer.py",
            "tests/test_flower_message_fedavgm.py",
            "tests/test_flower_message_fedopt.py",
            "tests/test_flower_legacy_fedavgm.py",  # also legacy-api's: needs both
        ),
        module="strategies.server_optimizer",
        keys=(
            "server-optimizer",
            "server-learning-rate",
            "server-momentum",
            "server-beta-1",
            "server-beta-2",
            "server-tau",
        ),
        words=(
            "FedAvgM",
            "FedAdam",
            "FedYogi",
            "FedAdagrad",
            "server momentum",
            "server learning rate",
            "velocity",
            "server-optimizer",
        ),
    ),
    "robust": Part(
        "robust filters of the hybrid rule: MAD, norm clipping, and a direction and cosine test",
        ("strategies/robust.py", "fl_app/parts/robust_keys.py", "tests/test_robust.py"),
        module="strategies.robust",
        keys=(
            "robust-filter",
            "robust-mad-k",
            "robust-clip-norm",
            "robust-norm-ratio",
            "robust-min-cosine",
        ),
        words=("robust filter", "robust filters", "MAD", "cosine", "robust-filter"),
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
        words=("zoo", "torchvision", "MNIST", "CIFAR", "hf", "Hugging Face", "synthetic", "shard"),
    ),
    "tracking": Part(
        "experiment tracking in TensorBoard, MLflow or Weights & Biases",
        ("fl_app/parts/tracking.py", "tests/test_tracking.py"),
        module="fl_app.parts.tracking",
        keys=("tracker",),
        words=("tracker", "tracking", "TensorBoard", "MLflow", "wandb", "Weights & Biases"),
    ),
    "plots": Part(
        "the run's accuracy and loss curves as PNG files (matplotlib)",
        ("fl_app/parts/plots.py", "tests/test_plots.py"),
        module="fl_app.parts.plots",
        words=("matplotlib", "accuracy.png", "loss.png", "plot", "plots"),
    ),
    "flower-baselines": Part(
        "Flower's robust aggregators (flower-krum, flower-median, ...) as baselines, and "
        "Flower's FedAvg and FedAdam (flower-fedavg, flower-fedadam) as reference rows",
        (
            "strategies/flower_robust.py",
            "fl_app/parts/baseline_keys.py",
            "tests/test_flower_robust.py",
        ),
        module="strategies.flower_robust",
        keys=("num-malicious-clients", "num-clients-to-keep", "trimmed-beta"),
        words=("baseline", "baselines", "Krum", "Bulyan", "trimmed mean"),
    ),
    "presets": Part(
        "ready-made scenarios of run_simulation.py --preset",
        ("fl_app/parts/presets.py", "tests/test_presets.py"),
        module="fl_app.parts.presets",
        flags=("--preset",),
        requires=("cli-extensions", "comparisons", "plots", "zoo"),
        words=("preset",),
    ),
    "ray-cluster": Part(
        "starting Ray nodes and checking a cluster before run_simulation.py --ray-address joins "
        "it; the Ray nodes the clients trained on, in the records and the summary",
        ("fl_app/parts/ray_cluster.py", "fl_app/parts/ray_nodes.py", "tests/test_ray_cluster.py"),
        module="fl_app.parts.ray_cluster",
        flags=("--ray-address",),
        requires=("client-wrappers", "cli-extensions", "local-commands"),
        words=("ray_cluster", "ray-cluster", "ray_node", "ray_nodes", "Ray nodes"),
    ),
    "client-wrappers": Part(
        "the base of the optional parts' clients that wrap the app's NumPyClient",
        ("fl_app/parts/wrapped_client.py",),
        module="fl_app.parts.wrapped_client",
        words=("WrappedClient", "client-wrappers"),
    ),
    "cli-extensions": Part(
        "the hooks through which optional parts add flags and runs to run_simulation.py",
        ("fl_app/kit/extensions.py",),
        module="fl_app.kit.extensions",
        words=("Extension", "extensions", "RunError"),
    ),
    "benchmarks": Part(
        "scripts that measure aggregation, overhead, peers, privacy, robustness, scale, "
        "deployments, GPUs",
        ("benchmarks", "tests/test_peers.py"),
        words=("benchmark", "benchmarks"),
    ),
    "deployment-scripts": Part(
        "scripts that start a SuperLink and SuperNodes on this machine (TLS, auth, netns, "
        "the warm SuperExec)",
        (
            "scripts",
            "fl_app/engine/warm.py",
            "tests/deployments.py",
            "tests/test_deployment.py",
            "tests/test_netns_deployment.py",
            "tests/test_warm_superexec.py",
            "tests/test_client_state_deployment.py",  # also client-state's: needs both
        ),
        requires=("local-commands",),
        words=("local_deployment", "netns", "warm_superexec", "generate_certs", "scripts/"),
    ),
    "client-state": Part(
        "each logical client's own state, kept between its rounds whatever node runs it, "
        "by the server (in checkpoints too) or on its node; personal layers (a client's own head)",
        (
            "fl_app/parts/client_state.py",
            "fl_app/parts/client_state_keys.py",
            "strategies/client_states.py",
            "strategies/stateful_messages.py",
            "tests/test_client_state.py",
            "tests/test_client_state_deployment.py",  # also deployment-scripts': needs both
        ),
        module="fl_app.parts.client_state",
        keys=("personal-layers", "client-state-on"),
        requires=("client-wrappers",),
        words=("client_state", "client-state", "personal layers", "StatefulMessages"),
    ),
    "scaffold": Part(
        "SCAFFOLD (Karimireddy et al. 2020): control variates that correct each client's drift",
        (
            "fl_app/parts/scaffold.py",
            "fl_app/parts/scaffold_keys.py",
            "strategies/scaffold.py",
            "strategies/scaffold_messages.py",
            "strategies/scaffold_state.py",
            "tests/test_scaffold.py",
        ),
        module="fl_app.parts.scaffold",
        requires=("client-state", "client-wrappers"),
        words=("scaffold", "SCAFFOLD", "control variate"),
    ),
    "local-commands": Part(
        "Flower's commands on this machine: free loopback ports and their environment",
        ("fl_app/kit/local.py",),
        module="fl_app.kit.local",
        words=("flower_env", "free_port"),
    ),
}


# The template's own files, never in a new app: its docs site, the parts table, `new` and
# their tests; its lines elsewhere end in "# part: template".
TEMPLATE = Part(
    "the template's docs site, its parts table and fl_app.new",
    (
        "fl_app/new.py",
        "fl_app/parts/__init__.py",
        "README.md",
        "docs",
        "mkdocs.yml",
        "tests/test_docs.py",
        "tests/test_extending.py",
        "tests/test_new.py",
        "tests/test_parts.py",
    ),
    module="fl_app.new",
)


def registered_part(line: str) -> str | None:
    """The part that ``line`` registers (it ends in ``# part: <name>``), or None."""
    found = _REGISTRATION.search(line.rstrip())
    return found.group(1) if found else None
