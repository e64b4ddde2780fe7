"""SCAFFOLD's client (the optional part ``scaffold``; the math: ``strategies/scaffold.py``):
the app's own training, each SGD step along g(y) − c_i + c, then c_i⁺ = c_i − c + (θ_g − y) /
(K η_l) kept in the client's own state. The correction is a gradient hook on each of the
model's parameters, so the task's training loop is the one every other rule runs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.client import NumPyClient

from fl_app.parts.client_state import client_state, received, reply_with
from fl_app.parts.wrapped_client import Config, FitAnswer, WrappedClient
from strategies.scaffold import CHANGE, CONTROL, VARIATE


def arrays_of(record: Any, like: list[Any]) -> list[Any]:
    """The arrays of ``record`` (zeros shaped ``like`` when there is none yet)."""
    if isinstance(record, ArrayRecord):
        return record.to_numpy_ndarrays()
    return [np.zeros_like(a) for a in like]


class ScaffoldClient(WrappedClient):
    """The app's FlowerClient (its model, data and knobs) trained with SCAFFOLD's correction."""

    def fit(self, parameters: list[Any], config: Config) -> FitAnswer:
        inner: Any = self.client  # the app's FlowerClient: its model, data, device and config
        cfg = inner.cfg
        control = arrays_of(received(CONTROL), parameters)  # c
        own = arrays_of(client_state().get(VARIATE), parameters)  # c_i
        learnable = dict(inner.model.named_parameters())
        hooks = []
        for name, c, c_i in zip(inner.model.state_dict(), control, own, strict=True):
            if name in learnable:  # a buffer (e.g. running statistics) takes no SGD step
                shift = torch.from_numpy(np.asarray(c - c_i)).to(inner.device)
                hooks.append(learnable[name].register_hook(lambda g, d=shift: g + d))
        try:
            trained, num_examples, metrics = inner.fit(parameters, config)
        finally:
            for hook in hooks:
                hook.remove()
        steps = cfg.local_epochs * math.ceil(len(inner.data.train) / cfg.batch_size)
        scale = 1.0 / (steps * cfg.learning_rate)
        updated = [
            (c_i.astype(np.float64) - c + (g.astype(np.float64) - y) * scale).astype(g.dtype)
            for c_i, c, g, y in zip(own, control, parameters, trained, strict=True)
        ]
        client_state()[VARIATE] = ArrayRecord(updated)
        reply_with(CHANGE, ArrayRecord([n - o for n, o in zip(updated, own, strict=True)]))
        return trained, num_examples, metrics


def scaffold(cfg: Any, client: NumPyClient) -> NumPyClient:
    return ScaffoldClient(client) if cfg.strategy == "scaffold" else client
