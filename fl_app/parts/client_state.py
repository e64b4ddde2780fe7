"""Each logical client's own state (the optional part ``client-state``): records that belong to
the client, not to the node that happens to run it. In a simulation one virtual node of a pool
serves many clients, so a node's ``context.state`` (where Flower's examples keep a client's
state) is shared by all of them; ``client_state()`` is the client's own, in every setting.

Between the client's rounds the records wait where ``client-state-on`` says:

- ``server`` (the default): the server keeps them (:mod:`strategies.stateful_messages`) and
  sends them with the client's messages; what ``fit`` leaves in them goes back with its reply
  and is kept if the update is accepted. The server's checkpoint holds them. The server sees
  them.
- ``node``: the client's node keeps them on its disk, in the folder its node config names
  (``client-state-dir``; default: ``client-state`` in the run's ``output-dir``, on the node),
  under the run the server names and the client's partition: a file per round the client
  trained in, the newest two kept (whatever training left, as Flower's ``context.state``). A
  message of round t reads the newest from before t (an evaluation: up to t), so a resumed
  run reads what the uninterrupted one did. Nothing leaves the node.

Either way they survive the rounds a client is not sampled in, any pool size, either backend,
a deployment and ``--resume``. The Message API only (``flower-api = message``).

``personal-layers = k`` uses it as Flower's advanced-pytorch example does: the model's last k
arrays (2: a linear head's weight and bias) are each client's own; they replace the global
model's before training and evaluation, and are kept after training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.client import NumPyClient

from fl_app.kit.files import atomic_file
from fl_app.kit.keys import fail
from fl_app.parts.wrapped_client import Config, FitAnswer, WrappedClient
from strategies.core.state import StrategyState
from strategies.sampling import PARTITION_KEY
from strategies.stateful_messages import RUN_KEY, STATE_PREFIX, as_content, state_records

PERSONAL = "personal-layers"  # the record of a client's own last layers
NODE_FOLDER_KEY = "client-state-dir"  # node config: where a node keeps its clients' state
KEPT_ROUNDS = 2  # a node's files per client: the newest, and the one a resumed round reads
_CURRENT: ContextVar[RecordDict] = ContextVar("client_state")
_MESSAGE: ContextVar[Message] = ContextVar("client_message")
_SAVE_TO: ContextVar[Path | None] = ContextVar("client_state_file", default=None)
_REPLY: ContextVar[dict[str, Any]] = ContextVar("client_reply")


def client_state() -> RecordDict:
    """The records of the client this ``fit`` or ``evaluate`` is for: Flower's ``context.state``,
    but the logical client's. What ``fit`` leaves here comes back in the client's next round
    (what ``evaluate`` changes does not)."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError(
            "client_state() is for a client's fit or evaluate under the Message API "
            "(flower-api = message)"
        ) from None


def entering(message: Message, sent: Config, cfg: Any, context: Context) -> RecordDict:
    """The client's state for ``message`` (``sent``: its config; ``cfg``: the run config), as
    :func:`client_state` gives it: sent with the message, or where the server named a run, read
    from the node's disk."""
    if (run := sent.get(RUN_KEY)) is None:
        content = message.content
        sent_state = {
            k.removeprefix(STATE_PREFIX): r
            for k, r in content.items()
            if k.startswith(STATE_PREFIX)
        }
        state, save_to = RecordDict(sent_state), None
    else:
        if not re.fullmatch("[0-9a-f]{32}", str(run)):  # a folder's name: no path from a server
            raise ValueError(f"{RUN_KEY} = {run!r} is not a run's name (32 hex digits)")
        node_config = context.node_config
        partition: Any = sent.get(PARTITION_KEY, node_config.get(PARTITION_KEY))
        folder = node_folder(cfg.output_dir, node_config) / str(run) / str(int(partition))
        server_round = int(sent.get("server-round", 0))
        training = message.metadata.message_type == MessageType.TRAIN
        state = read_newest(folder, server_round if training else server_round + 1)
        save_to = round_file(folder, server_round) if training else None
    _CURRENT.set(state)
    _MESSAGE.set(message)
    _SAVE_TO.set(save_to)
    _REPLY.set({})
    return state


def node_folder(output_dir: str, node_config: Mapping[str, Any]) -> Path:
    """The folder this node keeps its clients' state in: its node config's, or the run's
    ``output-dir`` on the node (a simulation's own)."""
    default = Path(output_dir) / "client-state"
    return Path(str(node_config.get(NODE_FOLDER_KEY) or default)).expanduser()


def round_file(folder: Path, server_round: int) -> Path:
    return folder / f"round-{server_round:06d}.npz"  # named to sort by round


def read_newest(folder: Path, before_round: int) -> RecordDict:
    """The records of the newest file in ``folder`` from a round before ``before_round``."""
    rounds = sorted(p for p in folder.glob("round-*.npz") if int(p.stem[6:]) < before_round)
    if not rounds:
        return RecordDict()
    with np.load(rounds[-1], allow_pickle=False) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    records = StrategyState.from_arrays({"client_states": arrays}).client_states.get("own", {})
    return RecordDict(as_content(records, prefix=""))


def save_newest(path: Path, state: RecordDict) -> None:
    """``state`` as ``path`` (atomically); of the files beside it, the newest ``KEPT_ROUNDS``
    stay."""
    own = StrategyState(client_states={"own": state_records(state, prefix="")})
    with atomic_file(path, "wb") as f:
        np.savez(f, *own.to_arrays().get("client_states", []), allow_pickle=False)
    for old in sorted(path.parent.glob("round-*.npz"))[:-KEPT_ROUNDS]:
        old.unlink(missing_ok=True)


def received(name: str) -> Any:
    """The record ``name`` the server sent with this client's message (None: none)."""
    client_state()  # the same refusal outside a client's fit or evaluate
    return _MESSAGE.get().content.get(name)


def reply_with(name: str, record: Any) -> None:
    """Send ``record`` (named ``name``) to the server with this ``fit``'s reply, wherever the
    client's state is kept (SCAFFOLD's change of c_i: the server needs it, not c_i)."""
    client_state()  # the same refusal outside a client's fit or evaluate
    _REPLY.get()[name] = record


def leaving(state: RecordDict) -> dict[str, Any]:
    """The reply's records: what :func:`reply_with` added, and ``state``, or where the node
    keeps it, nothing of it (it is saved there)."""
    sent = dict(_REPLY.get())
    if (path := _SAVE_TO.get()) is not None:
        save_newest(path, state)
        return sent
    return sent | {STATE_PREFIX + name: record for name, record in state.items()}


class PersonalLayers(WrappedClient):
    """The wrapped client with the model's last ``count`` arrays its own."""

    def __init__(self, client: NumPyClient, count: int) -> None:
        super().__init__(client)
        self.count = count

    def own(self, parameters: list[Any]) -> list[Any]:
        if self.count >= len(parameters):
            fail("personal-layers", self.count, f"below the model's {len(parameters)} arrays")
        kept = client_state().get(PERSONAL)
        mine = kept.to_numpy_ndarrays() if isinstance(kept, ArrayRecord) else []
        return [*parameters[: -self.count], *mine] if mine else parameters

    def fit(self, parameters: list[Any], config: Config) -> FitAnswer:
        trained, num_examples, metrics = self.client.fit(self.own(parameters), config)
        client_state()[PERSONAL] = ArrayRecord([a.copy() for a in trained[-self.count :]])
        return trained, num_examples, metrics

    def evaluate(self, parameters: list[Any], config: Config) -> tuple[float, int, Config]:
        return self.client.evaluate(self.own(parameters), config)


def personal(cfg: Any, client: NumPyClient) -> NumPyClient:
    return PersonalLayers(client, cfg.personal_layers) if cfg.personal_layers else client
