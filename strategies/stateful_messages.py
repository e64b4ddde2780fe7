"""The Message API's side of the optional part ``client-state``. Where the server keeps a
client's state (``client_state_on = "server"``), its records travel with the client's train and
evaluate messages (each named ``client-state.<name>``) and come back, changed, in its train
reply, kept if its update is accepted. The strategy keeps them by client id, the partition the
client reported (or that a pool named), not by node: so a client's state follows the logical
client, whichever node of a pool runs it, and its checkpoint holds every client's. Where nodes
keep it (``"node"``), each message names the run instead (``client-state-run``, the same after
a resume), and the records stay on the node (:mod:`fl_app.parts.client_state`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from strategies.client_states import Records
from strategies.core.rule import Rule
from strategies.core.update import ClientUpdate
from strategies.sampling import PARTITION_KEY

STATE_PREFIX = "client-state."  # the content records that hold a client's own state
RUN_KEY = "client-state-run"  # in the config of a message whose client's node keeps its state
KINDS = {"arrays": ArrayRecord, "config": ConfigRecord, "metrics": MetricRecord}


def state_records(content: RecordDict, prefix: str = STATE_PREFIX) -> Records:
    """The client-state records of a message's content (names from ``prefix`` on), as the
    strategy keeps them."""
    records: Records = {}
    for name, record in content.items():
        if not name.startswith(prefix):
            continue
        kind = next(k for k, record_type in KINDS.items() if isinstance(record, record_type))
        items: dict[str, Any] = dict(record)
        if isinstance(record, ArrayRecord):
            items = {key: array.numpy() for key, array in record.items()}
        records[name.removeprefix(prefix)] = (kind, items)
    return records


def as_content(records: Records, prefix: str = STATE_PREFIX) -> dict[str, Any]:
    """``records`` as content records of a message, named ``client-state.<name>``."""
    content: dict[str, Any] = {}
    for name, (kind, items) in records.items():
        if kind == "arrays":
            items = {key: Array(np.asarray(value)) for key, value in items.items()}
        content[prefix + name] = KINDS[kind](items)
    return content


class StatefulMessages:
    """Keeps each client's state between its rounds (a base of the Message-API strategy, whose
    marked lines call these)."""

    rule: Rule
    configrecord_key: str
    client_name: Callable[[Hashable], str]

    def attach_states(self, messages: list[Message]) -> None:
        """Each message carries its client's state (none before the client's first reply), or
        where nodes keep it, the name of the run they keep it under."""
        states, state = self.rule.state.client_states, self.rule.state
        on_nodes = self.rule.options.client_state_on == "node"
        if on_nodes and not state.client_state_run:
            state.client_state_run = uuid.uuid4().hex
        for message in messages:
            config: Any = message.content.config_records.get(self.configrecord_key) or {}
            if on_nodes:
                message.content[self.configrecord_key] = ConfigRecord(
                    {**config, RUN_KEY: state.client_state_run}
                )
                continue
            named = config.get(PARTITION_KEY)  # a pool's message names its client
            client = (
                str(named) if named is not None else self.client_name(message.metadata.dst_node_id)
            )
            if own := as_content(states.get(client, {})):  # Flower's messages share one content
                message.content = RecordDict({**dict(message.content), **own})

    def keep_states(self, accepted: list[ClientUpdate], contents: Mapping[str, RecordDict]) -> None:
        """The state each accepted client's reply carries replaces the one kept for it (a
        rejected update's state, NaN or from a wrong model, is not kept)."""
        for update in accepted:
            if records := state_records(contents[update.client_id]):
                self.rule.state.client_states[update.client_id] = records
