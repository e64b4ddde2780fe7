"""Differential privacy in the app, the optional part ``dp`` (with :mod:`strategies.privacy`
and :mod:`fl_app.parts.private_client`): its config keys, and DP-SGD training.

Central DP happens in the rule; under ``dp = local`` a client clips and noises its own
update; under ``dp = dp-sgd`` it trains with Opacus's DP-SGD (here) and reports its
schedule, which the server accounts. No Flower here: the config imports this module.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

import strategies
from fl_app.kit.data import task_of
from fl_app.kit.keys import fail, keys, option
from fl_app.task import ArrayDataset, loss_function, train
from strategies.core.rule import Rule
from strategies.privacy import (
    DP_CLIPPINGS,
    DP_MODES,
    count_stddev,
    update_noise_multiplier,
)


@keys
class DpKeys:
    """The config keys of DP, and their rules across keys."""

    dp: str = option(
        "differential privacy: none, central (the server clips each update to "
        "dp-clipping-norm and adds Gaussian noise to the aggregate), local (each client "
        "does that to its own update) or dp-sgd (sample-level: clients train with Opacus's "
        "DP-SGD, per-example gradients clipped to dp-clipping-norm); each round reports epsilon",
        choices=DP_MODES,
    )
    dp_noise_multiplier: float = option(
        "noise standard deviation over the most one client can move the aggregate",
        at_least=0,
    )
    dp_clipping_norm: float = option(
        "largest update norm ‖θ_i − θ_g‖ that counts (dp-sgd: per-example gradient norm)",
        above=0,
    )
    dp_delta: float = option("δ of the reported (ε, δ)", above=0, below=1)
    dp_clipping: str = option(
        "central DP's clipping norm: fixed (dp-clipping-norm) or adaptive (starts at "
        "dp-clipping-norm, follows dp-target-quantile of the update norms)",
        choices=DP_CLIPPINGS,
    )
    dp_target_quantile: float = option(
        "adaptive clipping: share of updates left unclipped",
        at_least=0,
        at_most=1,
    )
    dp_clip_learning_rate: float = option(
        "adaptive clipping: step of C ← C·exp(−η(b − γ))", above=0
    )
    dp_clipped_count_stddev: float = option(
        "adaptive clipping: noise on the unclipped count (0: clients sampled a round / 20); "
        "must exceed dp-noise-multiplier / 2",
        at_least=0,
    )

    def check(self) -> None:
        super().check()  # type: ignore[misc]
        cfg: Any = self  # the whole RunConfig
        if cfg.dp_clipping == "adaptive" and cfg.dp != "central":
            fail(
                "dp-clipping",
                cfg.dp_clipping,
                f"fixed with dp = {cfg.dp!r} (adaptive is central DP's)",
            )
        if cfg.dp_clipping == "adaptive" and cfg.dp_clipped_count_stddev > 0:
            try:
                update_noise_multiplier(cfg.dp_noise_multiplier, cfg.dp_clipped_count_stddev)
            except ValueError:
                fail(
                    "dp-clipped-count-stddev",
                    cfg.dp_clipped_count_stddev,
                    f"> dp-noise-multiplier / 2 = {cfg.dp_noise_multiplier / 2:g} under adaptive "
                    "clipping (the noisy count would take the whole privacy budget)",
                )
        if cfg.dp_clipping == "adaptive" and cfg.dp_clipped_count_stddev == 0:
            sampled = cfg.fit_clients(cfg.num_clients)
            stddev = count_stddev(0.0, sampled)  # the rule's m/20
            try:
                update_noise_multiplier(cfg.dp_noise_multiplier, stddev)
            except ValueError:
                fail(
                    "dp-noise-multiplier",
                    cfg.dp_noise_multiplier,
                    f"< {2 * stddev:g} with adaptive clipping and dp-clipped-count-stddev = 0 "
                    f"(m/20 = {stddev:g} for the {sampled} clients a round samples), or set "
                    "dp-clipped-count-stddev",
                )
        if cfg.dp == "dp-sgd" and cfg.proximal_mu:
            wanted = "0 with dp = 'dp-sgd' (Opacus's per-example gradients leave its term out)"
            fail("proximal-mu", cfg.proximal_mu, wanted)
        if cfg.dp == "central" and strategies.rule_type(cfg.strategy).combine is not Rule.combine:
            fail("dp", cfg.dp, f"none or local with strategy {cfg.strategy!r}: {NOT_A_SUM}")


# A rule that combines updates its own way (it overrides Rule.combine), like a median.
NOT_A_SUM = (
    "it combines the updates its own way, and central DP needs the weighted sum of clipped updates"
)


def dp_sgd_train(
    cfg: Any, model: nn.Module, data: ArrayDataset, *, device: torch.device, seed: int
) -> float:
    """The task's training with Opacus's DP-SGD steps: every example's gradient clipped to
    ``dp-clipping-norm``, ``N(0, (z·C)²)`` added to their sum, batches Poisson-sampled
    (each example with probability ``batch-size / n``; the same number of batches per
    epoch, :func:`strategies.accounting.dp_sgd_schedule`). ``model`` is trained in place."""
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
        criterion, loss_sum, seen = loss_function(task), 0.0, 0
        try:
            for _ in range(cfg.local_epochs):  # the task's training loop, on Opacus's batches
                loss_sum, seen = 0.0, 0
                for x, y in loader:
                    xb, yb = x.to(device), y.to(device)
                    optimizer.zero_grad(set_to_none=True)
                    loss = criterion(private(xb), yb)
                    loss.backward()
                    optimizer.step()  # also on an empty Poisson batch: it adds the noise
                    if len(yb):
                        loss_sum, seen = loss_sum + loss.item() * len(yb), seen + len(yb)
            return loss_sum / seen if seen else math.nan
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
