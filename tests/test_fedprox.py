"""FedProx (Li et al. 2020): the client's proximal term (μ/2)‖w − w_global‖², the key
``proximal-mu``, and the FedProx classes, against Flower's own FedProx on each API half."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fl_app.client_app import app
from fl_app.kit.config import RunConfig
from fl_app.kit.keys import ConfigError
from fl_app.task import ArrayDataset, train
from tests.test_client import CFG, context, global_weights
from tests.test_config import assert_one_line_error

pytestmark = pytest.mark.usefixtures("one_torch_thread", "task_identity")


SETTINGS: dict[str, Any] = {"epochs": 3, "batch_size": 16, "learning_rate": 0.5, "momentum": 0.0}
SETTINGS |= {"device": torch.device("cpu"), "seed": 0}


def linear_data() -> ArrayDataset:
    x = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    return ArrayDataset(x, (x @ np.array([1.0, -2.0, 0.5]) > 0).astype(np.int64))


def start_model() -> nn.Linear:
    torch.manual_seed(1)
    return nn.Linear(3, 2)


def trained(proximal_mu: float) -> nn.Linear:
    model = start_model()
    train(model, linear_data(), proximal_mu=proximal_mu, **SETTINGS)
    return model


def test_mu_zero_is_the_plain_training_bit_for_bit() -> None:
    plain = start_model()
    train(plain, linear_data(), **SETTINGS)
    off = trained(0.0)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), off.parameters(), strict=True))


def test_the_proximal_step_by_hand() -> None:
    """Full-batch SGD: w ← w − η (∇L(w) + μ (w − w_0)), by autograd on L alone."""
    mu = 0.7
    reference = start_model()
    start = [p.detach().clone() for p in reference.parameters()]
    data = linear_data()
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    for _ in range(SETTINGS["epochs"]):
        reference.zero_grad()
        nn.CrossEntropyLoss()(reference(x), y).backward()
        with torch.no_grad():
            for p, p0 in zip(reference.parameters(), start, strict=True):
                assert p.grad is not None
                p -= SETTINGS["learning_rate"] * (p.grad + mu * (p - p0))
    proximal = trained(mu)
    for got, want in zip(proximal.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

    # The term keeps the model nearer where it started.
    def moved(model: nn.Module) -> float:
        pairs = zip(model.parameters(), start, strict=True)
        return sum(float(torch.linalg.norm(p.detach() - p0)) for p, p0 in pairs)

    assert moved(proximal) < moved(trained(0.0))


def flowers_fedprox(half: Any, proximal_mu: float) -> Any:
    strategy, _ = half.flowers("FedProx", global_weights(), proximal_mu=proximal_mu)
    return strategy


def our_fedprox(half: Any, proximal_mu: float) -> Any:
    return half.ours("FedProx")(proximal_mu=proximal_mu)


def test_our_fedprox_sends_what_flowers_sends(half: Any) -> None:
    ours = half.train_config(our_fedprox(half, 0.3))
    flowers = half.train_config(flowers_fedprox(half, 0.3))
    mu_key = next(k for k in flowers if "mu" in k)  # proximal-mu, or as the older API spells it
    assert ours[mu_key] == flowers[mu_key] == 0.3
    assert {k: ours[k] for k in flowers} == flowers


def test_our_client_trains_with_the_mu_flowers_fedprox_sends(half: Any) -> None:
    """The same training as a run with that ``proximal-mu`` (bit for bit), not as one without."""
    sent = half.train_config(flowers_fedprox(half, 0.5))
    weights = global_weights()

    def loss(config: dict[str, Any], cfg: RunConfig) -> float:
        return half.train_loss(app(half.train_message(weights, config), context(cfg.run_config)))

    under_flowers = loss(sent, CFG)
    with_mu = RunConfig(local_epochs=1, device="cpu", proximal_mu=0.5)
    assert under_flowers == loss({}, with_mu)
    assert under_flowers != loss({}, CFG)


def test_proximal_mu_is_a_key_with_its_bounds() -> None:
    assert RunConfig.from_mapping({"proximal-mu": 0.01}).proximal_mu == 0.01
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"proximal-mu": -0.1})
    assert_one_line_error(info.value, "proximal-mu", -0.1)
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"proximal-mu": math.nan})
    assert_one_line_error(info.value, "proximal-mu", math.nan)
