"""Model registry: name -> torch module builder for a given input shape and class count."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fl_app.kit.config import ConfigError
from fl_app.kit.seeds import seed_for

ModelBuilder = Callable[[tuple[int, ...], int], nn.Module]


def linear(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression (softmax classifier)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """McMahan et al.'s "2NN": two hidden layers of 200 ReLU units."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 200),
        nn.ReLU(),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


def _conv_net(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: tuple[int, int],
    hidden: tuple[int, ...],
) -> nn.Module:
    """Two 5×5 'same' convolutions with 2×2 max-pooling, then fully connected layers."""
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise ConfigError(
            f"model needs image inputs (C, H, W) of at least 4×4, got shape {input_shape}"
        )
    in_channels = input_shape[0]
    features = nn.Sequential(
        nn.Conv2d(in_channels, channels[0], 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(channels[0], channels[1], 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, *input_shape)).shape[1]
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(flat, width), nn.ReLU()]
        flat = width
    return nn.Sequential(features, *layers, nn.Linear(flat, num_classes))


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """McMahan et al.'s MNIST CNN: conv 32, conv 64 (5×5, pooled), FC 512."""
    return _conv_net(input_shape, num_classes, channels=(32, 64), hidden=(512,))


def cifar_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """McMahan et al.'s CIFAR-10 CNN: conv 64, conv 64 (5×5, pooled), FC 384, FC 192."""
    return _conv_net(input_shape, num_classes, channels=(64, 64), hidden=(384, 192))


@dataclass(frozen=True)
class Architecture:
    """A registered model: its builder, and whether it needs image inputs ``(C, H, W)``."""

    build: ModelBuilder
    images_only: bool = False


# name -> model. Add a model: a builder above and one entry here.
MODELS: dict[str, Architecture] = {
    "linear": Architecture(linear),
    "mlp": Architecture(mlp),
    "cnn": Architecture(cnn, images_only=True),
    "cifar-cnn": Architecture(cifar_cnn, images_only=True),
}


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """Model ``name`` with weights initialised from ``seed`` (same seed: same weights)."""
    if name not in MODELS:
        raise ConfigError(
            f"config 'model' = {name!r} is not allowed: must be one of {', '.join(MODELS)}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, "model-init"))
        return MODELS[name].build(input_shape, num_classes)
