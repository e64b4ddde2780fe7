"""The centralized reference: the union of the clients' training data, the same budget."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import run_simulation
from fl_app import task
from fl_app.kit.config import RunConfig
from fl_app.kit.data import load_client_data
from fl_app.kit.keys import ConfigError
from fl_app.parts.centralized import CENTRALIZED, pooled_training_data, train_centrally
from tests.processes import read_history, run_python

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NUM_CLIENTS = 5


def test_the_pooled_data_is_every_clients_training_split() -> None:
    cfg = RunConfig(partitioner="dirichlet")
    pooled = pooled_training_data(cfg, NUM_CLIENTS)
    parts = [load_client_data(cfg, pid, NUM_CLIENTS).train for pid in range(NUM_CLIENTS)]
    assert len(pooled) == sum(len(p) for p in parts)
    rows = Counter((x.tobytes(), int(y)) for x, y in zip(pooled.x, pooled.y, strict=True))
    want = Counter((x.tobytes(), int(y)) for p in parts for x, y in zip(p.x, p.y, strict=True))
    assert rows == want  # nobody's validation split, the server's sets not included


def test_centralized_training_learns_and_writes_a_run_folder(tmp_path: Path) -> None:
    cfg = RunConfig(
        num_server_rounds=2, local_epochs=1, device="cpu", output_dir=str(tmp_path), run_name="c"
    )
    rounds = train_centrally(cfg, NUM_CLIENTS)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["central_accuracy"] > rounds[0]["central_accuracy"] + 0.5
    assert read_history(tmp_path / "c")["rounds"] == rounds
    assert (tmp_path / "c" / "final_model.pt").is_file()
    assert {p.name for p in (tmp_path / "c").glob("*.png")} == {"accuracy.png", "loss.png"}


def test_compare_takes_centralized_as_a_row() -> None:
    comparison = run_simulation.parse(["--compare", "fedavg", CENTRALIZED]).runner
    assert comparison.variants == {"fedavg": {"strategy": "fedavg"}, CENTRALIZED: {}}  # type: ignore[union-attr]


def test_centralized_needs_a_dataset_with_a_pooled_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        task.DATASETS, "per-client", type("PerClient", (task.Dataset,), {"partitioned": False})()
    )
    with pytest.raises(ConfigError) as info:
        run_simulation.parse(["--compare", "fedavg", CENTRALIZED, "--dataset", "per-client"])
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert "'per-client'" in message
    assert "no pooled training set" in message


@pytest.mark.slow
def test_a_comparison_with_the_centralized_reference_row(tmp_path: Path) -> None:
    done = run_python(
        [
            "run_simulation.py", "--output-dir", str(tmp_path), "--run-name", "gap",
            "--compare", "fedavg", CENTRALIZED,
            "--num-clients", "4", "--num-server-rounds", "2", "--local-epochs", "1",
        ]
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (tmp_path / "gap" / "comparison.md").read_text()
    assert "| fedavg |" in table
    assert f"| {CENTRALIZED} |" in table
    federated = read_history(tmp_path / "gap" / "fedavg")["rounds"]
    centralized = read_history(tmp_path / "gap" / CENTRALIZED)["rounds"]
    assert [r["round"] for r in centralized] == [r["round"] for r in federated] == [0, 1, 2]
    # The same initial model and server test set: round 0 is the same evaluation.
    assert centralized[0]["central_loss"] == federated[0]["central_loss"]
    assert centralized[-1]["central_accuracy"] > centralized[0]["central_accuracy"] + 0.5
