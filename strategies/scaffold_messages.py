"""The Message API's side of the optional part ``scaffold``: the server's control variate c
goes with every message of a round, and after it c takes in the change c_i⁺ − c_i that each
accepted client's reply brings (its c_i stays in its own state, wherever that is kept:
:mod:`strategies.stateful_messages`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from strategies.aggregate import Model, all_finite, mismatch
from strategies.core.update import LOG, ClientUpdate
from strategies.scaffold import CHANGE, CONTROL, ScaffoldRule, next_control
from strategies.stateful_messages import StatefulMessages


def change(client: str, content: RecordDict, like: Model) -> Model:
    """A reply's c_i⁺ − c_i: zeros, shaped ``like``, where the client sends none or one that
    does not fit the model (said in the log)."""
    record = content.get(CHANGE)
    arrays = record.to_numpy_ndarrays() if isinstance(record, ArrayRecord) else None
    if arrays is not None and (problem := mismatch(arrays, like) or finite(arrays)):
        LOG.warning(f"client {client}: its {CHANGE} is left out of c: {problem}")
        arrays = None
    return [np.zeros_like(a) for a in like] if arrays is None else arrays


def finite(arrays: Model) -> str | None:
    return None if all_finite(arrays) else "it contains NaN or Inf"


class ScaffoldMessages(StatefulMessages):
    """Sends c and updates it (a base of the Message-API strategy, before the state's keeper);
    a strategy of another rule passes through."""

    rule: Any

    def attach_states(self, messages: list[Message]) -> None:
        super().attach_states(messages)
        control = getattr(self.rule.state, "control", None)
        if isinstance(self.rule, ScaffoldRule) and control is not None:
            record = ArrayRecord([np.asarray(c) for c in control])
            for message in messages:
                message.content[CONTROL] = record

    def keep_states(self, accepted: list[ClientUpdate], contents: Mapping[str, RecordDict]) -> None:
        super().keep_states(accepted, contents)  # the clients' c_i⁺, where the server keeps them
        if not (isinstance(self.rule, ScaffoldRule) and accepted):
            return
        state, like = self.rule.state, self.rule.require_global()
        changes = [change(u.client_id, contents[u.client_id], like) for u in accepted]
        total = self.rule.sampling[1] if self.rule.sampling else len(accepted)
        control = state.control or [np.zeros_like(a) for a in like]
        state.control = next_control(control, changes, total)
