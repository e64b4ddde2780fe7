"""The task as the run config drives it: a client's training with the run's knobs, and the
server's model (initial weights, central evaluation, scoring). Knows nothing of Flower."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fl_app import task
from fl_app.kit.data import Settings, check_split, load_server_data, task_of
from fl_app.kit.keys import fail
from fl_app.parts.privacy import dp_sgd_train  # part: dp
from fl_app.task import ArrayDataset, Weights, build_model, evaluate, get_weights, set_weights


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        fail("device", name, "auto or cpu: torch finds no CUDA device on this machine")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(auto if name == "auto" else name)


def train_as_configured(
    cfg: Settings, model: nn.Module, data: ArrayDataset, *, device: torch.device, seed: int
) -> float:
    """:func:`fl_app.task.train` with the run's local-training knobs."""
    if cfg.dp == "dp-sgd":  # part: dp
        return dp_sgd_train(cfg, model, data, device=device, seed=seed)  # part: dp
    return task.train(
        model,
        data,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        momentum=cfg.momentum,
        device=device,
        seed=seed,
        task=task_of(cfg.dataset),
        proximal_mu=cfg.proximal_mu,
    )


class ServerModel:
    """The server's model and data: the initial global model, central evaluation, scoring."""

    def __init__(self, cfg: Settings) -> None:
        check_split(cfg)
        self.data, self.device = load_server_data(cfg), pick_device(cfg.device)
        shape, classes = self.data.spec.input_shape, self.data.spec.num_classes
        self.model = build_model(cfg.model, shape, classes, cfg.seed).to(self.device)
        self.initial = get_weights(self.model)

    def central(self, arrays: Weights | None = None) -> dict[str, Any]:
        """``central_*`` metrics of ``arrays`` (default: the model as it is) on the test set."""
        if arrays is not None:
            set_weights(self.model, arrays)
        result = evaluate(self.model, self.data.test, device=self.device, task=self.data.spec.task)
        return {f"central_{k}": v for k, v in result.items()}

    def score(self, arrays: Sequence[Any]) -> dict[str, float]:
        """A client model's ``val_*`` metrics on the server validation set."""
        set_weights(self.model, list(arrays))
        result = evaluate(self.model, self.data.val, device=self.device, task=self.data.spec.task)
        return {f"val_{k}": v for k, v in result.items()}

    def save(self, arrays: Weights, path: Path) -> None:
        set_weights(self.model, arrays)
        torch.save(self.model.state_dict(), path)
