"""The Message API's side of the optional part ``scaffold``: the server's control variate c
goes with every message of a round, and after it c takes in the change of each accepted
client's c_i, which the client's own state brought back (:mod:`strategies.stateful_messages`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from strategies.aggregate import Model
from strategies.client_states import Records
from strategies.core.update import ClientUpdate
from strategies.scaffold import CONTROL, VARIATE, ScaffoldRule, next_control
from strategies.stateful_messages import StatefulMessages


def variate(records: Records | None, like: Model) -> Model:
    """A client's c_i from its state records (zeros, shaped ``like``, before its first round)."""
    if records is None or VARIATE not in records:
        return [np.zeros_like(a) for a in like]
    return list(records[VARIATE][1].values())


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
        if not (isinstance(self.rule, ScaffoldRule) and accepted):
            super().keep_states(accepted, contents)
            return
        state, like = self.rule.state, self.rule.require_global()
        before = {
            u.client_id: variate(state.client_states.get(u.client_id), like) for u in accepted
        }
        super().keep_states(accepted, contents)  # the clients' c_i⁺
        changes = []
        for client, old in before.items():
            new = variate(state.client_states.get(client), like)
            changes.append([n - o for n, o in zip(new, old, strict=True)])
        total = self.rule.sampling[1] if self.rule.sampling else len(accepted)
        control = state.control or [np.zeros_like(a) for a in like]
        state.control = next_control(control, changes, total)
