"""benchmarks/peers.py hands pfl-research exactly the project's workload.

Runs pfl's side (``benchmarks/peers_pfl.py --check``) in pfl's own environment
(``.venv-pfl``, see benchmarks/peers.py); skipped where that environment is absent.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import run_simulation
from benchmarks.peers import PFL_SIDE, PFL_VENV, REPO, export_workload, workload_flags
from fl_app.kit.data import data_spec, load_client_data
from fl_app.task import build_model
from strategies.sampling import SeededSampler

PFL_PYTHON = PFL_VENV / "bin" / "python"

pytestmark = pytest.mark.skipif(
    not PFL_PYTHON.exists(), reason=f"pfl's environment {PFL_VENV} is absent (see peers.py)"
)


def test_pfl_gets_the_projects_partitions_cohorts_and_model(tmp_path: Path) -> None:
    rounds = 3
    invocation = run_simulation.parse(workload_flags(rounds, 7, str(tmp_path / "out")))
    cfg = invocation.cfg
    num_clients = cfg.num_clients
    workload, seen_path = tmp_path / "workload.npz", tmp_path / "seen.npz"
    export_workload(cfg, num_clients, workload)

    subprocess.run(
        [str(PFL_PYTHON), str(PFL_SIDE), str(workload), str(seen_path), "--check"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
        capture_output=True,
        timeout=120,
    )
    seen = np.load(seen_path)

    # Each round, pfl's FederatedDataset yields the clients the project's seeded sampling
    # draws, with each one's training data exactly as the project's client trains on it.
    sampler = SeededSampler(cfg.seed)
    per_round = cfg.fit_clients(num_clients)
    for server_round, users in enumerate(seen["users"], start=1):
        assert list(users) == sampler.draw(server_round, "train", num_clients, per_round)
        data = [load_client_data(cfg, int(u), num_clients).train for u in users]
        np.testing.assert_array_equal(
            seen[f"round{server_round}_x"], np.concatenate([d.x for d in data])
        )
        np.testing.assert_array_equal(
            seen[f"round{server_round}_y"], np.concatenate([d.y for d in data])
        )
    assert len(seen["users"]) == rounds

    # The project's architecture and initial weights.
    spec = data_spec(cfg)
    model = build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed)
    parameters = [p.detach().numpy() for p in model.parameters()]
    assert len([k for k in seen.files if k.startswith("parameter")]) == len(parameters)
    for i, parameter in enumerate(parameters):
        np.testing.assert_array_equal(seen[f"parameter{i}"], parameter)
