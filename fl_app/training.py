"""Local training and evaluation loops, model <-> numpy weights, and the server's model
(initial weights, central evaluation, scoring) that the federated server and the
centralized reference share. Knows nothing of Flower."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from fl_app.data import ArrayDataset, load_server_data, task_of
from fl_app.models import build_model

if TYPE_CHECKING:
    from fl_app.kit.config import RunConfig

Weights = list[NDArray[np.float32]]


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def get_weights(model: nn.Module) -> Weights:
    """A copy of the model's state as numpy arrays, in ``state_dict`` order.

    A copy, not a view: the model keeps training (one model serves every client of a
    process) and must not change arrays already handed out.
    """
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[NDArray[np.float32]]) -> None:
    """Load numpy arrays (in ``state_dict`` order) into the model."""
    keys = model.state_dict().keys()
    if len(weights) != len(keys):
        raise ValueError(f"got {len(weights)} arrays for a model with {len(keys)} tensors")
    state = OrderedDict(
        (k, torch.from_numpy(np.asarray(w))) for k, w in zip(keys, weights, strict=True)
    )
    model.load_state_dict(state, strict=True)


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float  # NaN for regression
    num_examples: int

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """``{prefix}loss`` and, for classification, ``{prefix}accuracy``."""
        values = {f"{prefix}loss": self.loss}
        if not math.isnan(self.accuracy):
            values[f"{prefix}accuracy"] = self.accuracy
        return values


def _batches(
    data: ArrayDataset, batch_size: int, device: torch.device, generator: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches on ``device``, shuffled when a ``generator`` is given.

    The data goes to the device once per call (one copy per client and round on a GPU,
    not one per batch); the shuffle is drawn on the CPU, so it is the same on any device.
    """
    x = torch.from_numpy(data.x).to(device)
    y = torch.from_numpy(data.y).to(device)
    order = torch.randperm(len(data), generator=generator) if generator is not None else None
    if order is not None:
        order = order.to(device)
    for start in range(0, len(data), batch_size):
        rows = (
            order[start : start + batch_size]
            if order is not None
            else slice(start, start + batch_size)
        )
        yield x[rows], y[rows]


@dataclass(frozen=True)
class DpSgd:
    """Sample-level DP-SGD (Opacus): every example's gradient clipped to
    ``max_grad_norm``, ``N(0, (noise_multiplier · max_grad_norm)²)`` added to their sum,
    batches Poisson-sampled (each example with probability ``batch_size / n``)."""

    noise_multiplier: float
    max_grad_norm: float


def train(
    model: nn.Module,
    data: ArrayDataset,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    device: torch.device,
    seed: int,
    task: str = "classification",
    dp_sgd: DpSgd | None = None,
) -> float:
    """SGD on ``data`` for ``epochs``; returns the mean training loss of the last epoch.

    The loss is cross-entropy for classification and mean squared error for regression.
    With ``dp_sgd`` the steps are Opacus's DP-SGD steps (the same number of batches per
    epoch, :func:`strategies.privacy.dp_sgd_schedule`); ``model`` is trained in place
    either way.
    """
    model.to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    criterion = loss_function(task)
    if dp_sgd is None or len(data) == 0:  # (Opacus cannot sample from nothing)
        generator = torch.Generator().manual_seed(seed)
        return _epochs(
            model,
            optimizer,
            criterion,
            epochs,
            lambda: _batches(data, batch_size, device, generator),
        )
    # Opacus draws the Poisson batches from torch's global generator: seeded, then put back.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # Opacus's hooks see inputs that need no gradient (the first layer's): harmless.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        torch.manual_seed(seed)
        private, optimizer, loader = _make_private(model, optimizer, data, batch_size, dp_sgd, seed)
        try:
            return _epochs(
                private,
                optimizer,
                criterion,
                epochs,
                lambda: ((x.to(device), y.to(device)) for x, y in loader),
            )
        finally:
            private.to_standard_module()  # hooks off: the cached model is used again


def _make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ArrayDataset,
    batch_size: int,
    dp_sgd: DpSgd,
    seed: int,
) -> tuple[Any, Any, Any]:
    from opacus import PrivacyEngine

    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y)),
        batch_size=batch_size,
    )
    # Each call accounts its own steps: the server composes a client's rounds.
    private = PrivacyEngine(accountant="rdp").make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=dp_sgd.noise_multiplier,
        max_grad_norm=dp_sgd.max_grad_norm,
        poisson_sampling=True,
        noise_generator=torch.Generator(device=device).manual_seed(seed),
    )
    module, dp_optimizer, dp_loader = private[0], private[1], private[-1]
    return module, dp_optimizer, dp_loader


def _epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    epochs: int,
    batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
) -> float:
    """The training loop; returns the mean loss of the last epoch."""
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        for xb, yb in batches():
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()  # also on a Poisson batch that came out empty: DP-SGD's noise
            if len(yb):
                loss_sum += loss.item() * len(yb)
                seen += len(yb)
    return loss_sum / seen if seen else math.nan


def train_as_configured(
    cfg: RunConfig, model: nn.Module, data: ArrayDataset, *, device: torch.device, seed: int
) -> float:
    """:func:`train` with the run's local-training knobs (epochs, batch size, SGD)."""
    return train(
        model,
        data,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        momentum=cfg.momentum,
        device=device,
        seed=seed,
        task=task_of(cfg.dataset),
        dp_sgd=DpSgd(cfg.dp_noise_multiplier, cfg.dp_clipping_norm) if cfg.dp == "dp-sgd" else None,
    )


def loss_function(task: str, reduction: str = "mean") -> nn.Module:
    """Cross-entropy for classification, mean squared error for regression."""
    return (
        nn.MSELoss(reduction=reduction)
        if task == "regression"
        else nn.CrossEntropyLoss(reduction=reduction)
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ArrayDataset,
    *,
    device: torch.device,
    task: str = "classification",
    batch_size: int = 1024,
) -> EvalResult:
    """Mean loss and accuracy on ``data``; accuracy is NaN for regression or an empty set.

    For regression the loss is the mean squared error per example.
    """
    if len(data) == 0:
        return EvalResult(math.nan, math.nan, 0)
    model.to(device)
    model.eval()
    criterion = loss_function(task, reduction="sum")
    loss_sum, correct = 0.0, 0
    for xb, yb in _batches(data, batch_size, device, generator=None):
        outputs = model(xb)
        loss_sum += criterion(outputs, yb).item()
        if task != "regression":
            correct += (outputs.argmax(dim=1) == yb).sum().item()
    outputs_per_example = data.y.shape[1] if task == "regression" else 1
    accuracy = math.nan if task == "regression" else correct / len(data)
    return EvalResult(loss_sum / (len(data) * outputs_per_example), accuracy, len(data))


class ServerModel:
    """The server's model and data: the initial global model, central evaluation, scoring."""

    def __init__(self, cfg: RunConfig) -> None:
        self.data = load_server_data(cfg)
        self.device = pick_device(cfg.device)
        spec = self.data.spec
        self.model = build_model(cfg.model, spec.input_shape, spec.num_classes, cfg.seed).to(
            self.device
        )
        self.initial = get_weights(self.model)

    def central(self, arrays: list[NDArray[Any]] | None = None) -> dict[str, Any]:
        """``central_loss`` / ``central_accuracy`` of ``arrays`` (default: the model as it
        is) on the server test set."""
        if arrays is not None:
            set_weights(self.model, arrays)
        result = evaluate(self.model, self.data.test, device=self.device, task=self.data.spec.task)
        return {f"central_{k}": v for k, v in result.metrics().items()}

    def score(self, arrays: Sequence[Any]) -> dict[str, float]:
        """A client model's ``val_*`` metrics on the server validation set."""
        set_weights(self.model, list(arrays))
        return evaluate(
            self.model, self.data.val, device=self.device, task=self.data.spec.task
        ).metrics(prefix="val_")

    def save(self, arrays: Weights, path: Path) -> None:
        """``arrays`` as the model's torch ``state_dict`` in ``path``."""
        set_weights(self.model, arrays)
        torch.save(self.model.state_dict(), path)
