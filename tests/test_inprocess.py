"""The in-process backend hands each ClientApp call what a Ray actor would get."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.server.superlink.fleet.vce.backend import BackendConfig

from fl_app.engine.inprocess import InProcessBackend

pytestmark = pytest.mark.usefixtures("task_identity")


def test_an_app_that_changes_its_message_leaves_the_senders_alone() -> None:
    """Flower's SecAgg+ client mod pops the ``stage`` key of the ConfigRecord it gets, and
    the server's workflow sends one ConfigRecord to every node: each call must see it whole."""
    app = ClientApp()
    seen: list[str] = []

    @app.train()
    def train(message: Message, context: Context) -> Message:
        seen.append(str(message.content.config_records["config"].pop("stage")))
        return Message(RecordDict(), reply_to=message)

    shared = RecordDict({"config": ConfigRecord({"stage": "setup"})})
    backend = InProcessBackend(BackendConfig())
    backend.build(lambda: app)
    for node_id in (1, 2):
        message = Message(shared, dst_node_id=node_id, message_type="train")
        context = Context(
            run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={}
        )
        backend.process_message(message, context)
    assert seen == ["setup", "setup"]
    assert shared.config_records["config"]["stage"] == "setup"
