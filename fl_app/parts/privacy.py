"""Differential privacy in the app: the optional part ``dp`` (with :mod:`strategies.privacy`).

The clients' side of the three modes: under ``dp = local`` a client clips and noises its
own update before sending it; under ``dp = dp-sgd`` it trains with Opacus's DP-SGD and
reports its schedule, which the server accounts. Central DP happens in the rule.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from fl_app.kit.data import task_of
from fl_app.task import ArrayDataset, loss_function, train, train_epochs


def dp_sgd_train(
    cfg: Any, model: nn.Module, data: ArrayDataset, *, device: torch.device, seed: int
) -> float:
    """The task's training with Opacus's DP-SGD steps: every example's gradient clipped to
    ``dp-clipping-norm``, ``N(0, (z·C)²)`` added to their sum, batches Poisson-sampled
    (each example with probability ``batch-size / n``; the same number of batches per
    epoch, :func:`strategies.privacy.dp_sgd_schedule`). ``model`` is trained in place."""
    knobs = {
        "epochs": cfg.local_epochs,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "momentum": cfg.momentum,
    }
    task = task_of(cfg.dataset)
    if len(data) == 0:  # Opacus cannot sample from nothing
        return train(model, data, **knobs, device=device, seed=seed, task=task)
    model.to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum)
    # Opacus draws the Poisson batches from torch's global generator: seeded, then put back.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # Opacus's hooks see inputs that need no gradient (the first layer's): harmless.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        torch.manual_seed(seed)
        private, optimizer, loader = _make_private(model, optimizer, data, cfg, seed)
        try:
            return train_epochs(
                private,
                optimizer,
                loss_function(task),
                cfg.local_epochs,
                lambda: ((x.to(device), y.to(device)) for x, y in loader),
            )
        finally:
            private.to_standard_module()  # hooks off: the cached model is used again


def _make_private(
    model: nn.Module, optimizer: torch.optim.Optimizer, data: ArrayDataset, cfg: Any, seed: int
) -> tuple[Any, Any, Any]:
    from opacus import PrivacyEngine

    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y)),
        batch_size=cfg.batch_size,
    )
    # Each call accounts its own steps: the server composes a client's rounds.
    private = PrivacyEngine(accountant="rdp").make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=cfg.dp_noise_multiplier,
        max_grad_norm=cfg.dp_clipping_norm,
        poisson_sampling=True,
        noise_generator=torch.Generator(device=device).manual_seed(seed),
    )
    module, dp_optimizer, dp_loader = private[0], private[1], private[-1]
    return module, dp_optimizer, dp_loader
