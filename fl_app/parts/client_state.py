"""Each logical client's own state (the optional part ``client-state``): records that belong to
the client, not to the node that happens to run it. In a simulation one virtual node of a pool
serves many clients, so a node's ``context.state`` (where Flower's examples keep a client's
state) is shared by all of them; ``client_state()`` is the client's own, in every setting.

The server keeps each client's records between its rounds (:mod:`strategies.stateful_messages`)
and sends them with the client's messages; what ``fit`` leaves in them goes back with its reply.
So they survive the rounds a client is not sampled in, any pool size, either backend, a
deployment, and, being in the server's checkpoint, ``--resume``. They travel with the
messages: the server sees them. The Message API only (``flower-api = message``).

``personal-layers = k`` uses it as Flower's advanced-pytorch example does: the model's last k
arrays (2: a linear head's weight and bias) are each client's own; they replace the global
model's before training and evaluation, and are kept after training.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from flwr.app import ArrayRecord, Message, RecordDict
from flwr.client import NumPyClient

from fl_app.kit.keys import fail
from fl_app.parts.wrapped_client import Config, FitAnswer, WrappedClient
from strategies.stateful_messages import STATE_PREFIX

PERSONAL = "personal-layers"  # the record of a client's own last layers
_CURRENT: ContextVar[RecordDict] = ContextVar("client_state")
_MESSAGE: ContextVar[Message] = ContextVar("client_message")


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


def entering(message: Message) -> RecordDict:
    """The state the server sent with ``message``, as :func:`client_state` gives it."""
    content = message.content
    state = RecordDict(
        {k.removeprefix(STATE_PREFIX): r for k, r in content.items() if k.startswith(STATE_PREFIX)}
    )
    _CURRENT.set(state)
    _MESSAGE.set(message)
    return state


def received(name: str) -> Any:
    """The record ``name`` the server sent with this client's message (None: none)."""
    client_state()  # the same refusal outside a client's fit or evaluate
    return _MESSAGE.get().content.get(name)


def leaving(state: RecordDict) -> dict[str, Any]:
    """``state`` as the reply's records."""
    return {STATE_PREFIX + name: record for name, record in state.items()}


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
