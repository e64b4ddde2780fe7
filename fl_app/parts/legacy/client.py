"""The legacy half's client side: legacy messages and SecAgg+'s stages answered by the same
NumPyClient, which under SecAgg+ sends the weight the masked sum multiplies it by."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client import Client, NumPyClient
from flwr.client.message_handler.message_handler import handle_legacy_message_from_msgtype
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, GetPropertiesRes, NDArrays, Scalar, Status
from flwr.common.constant import MessageTypeLegacy
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import getpropertiesres_to_recorddict

import strategies
from fl_app.kit.seeds import seed_for
from fl_app.parts.wrapped_client import Config, FitAnswer, WrappedClient
from strategies.sampling import PARTITION_KEY
from strategies.secure import secure_weight

# Record-name prefixes of Flower's legacy messages (FitIns, EvaluateIns, ... as records).
LEGACY_RECORD_PREFIXES = ("fitins.", "evaluateins.", "getparametersins.", "getpropertiesins.")


def is_legacy(message: Message) -> bool:
    """Whether ``message`` comes from a legacy (``flwr.server.strategy``) server."""
    return any(key.startswith(LEGACY_RECORD_PREFIXES) for key in message.content)


def node_properties(context: Context) -> GetPropertiesRes:
    """The node's partition id, for the server's seeded sampling (nothing when the node
    config names none)."""
    reported: dict[str, Scalar] = {
        k: v for k, v in context.node_config.items() if k == PARTITION_KEY
    }
    return GetPropertiesRes(Status(Code.OK, ""), reported)


class LegacyAnswering(ClientApp):
    """``app`` (the Message-API ClientApp) that also answers legacy messages, through
    Flower's NumPyClient handler and ``client_fn``, and SecAgg+'s stages, through Flower's
    ``secaggplus_mod``."""

    def __init__(
        self,
        app: ClientApp,
        client_fn: Callable[[Context, Message], Client],
        config: Callable[[Context, Message], Any],
    ) -> None:
        super().__init__()
        self.app = app
        self.client_fn = client_fn
        self.config = config

    def __call__(self, message: Message, context: Context) -> Message:
        secure = RECORD_KEY_CONFIGS in message.content.config_records
        if not secure or message.metadata.message_type != MessageType.TRAIN:
            return self._answer(message, context)
        # A SecAgg+ stage: Flower's client mod runs the protocol (its state lives in the
        # node's context) and has the legacy handler train at its masking stage. Its
        # stochastic rounding draws from numpy's global generator: seeded here, then put back.
        server_round = int(message.metadata.group_id or 0)
        partition = int(context.node_config.get(PARTITION_KEY, 0))
        before = np.random.get_state()
        np.random.seed(
            seed_for(self.config(context, message).seed, "secagg", server_round, partition)
        )
        try:
            return secaggplus_mod(message, context, self._answer)
        finally:
            np.random.set_state(before)

    def _answer(self, message: Message, context: Context) -> Message:
        if is_legacy(message):
            if message.metadata.message_type == MessageTypeLegacy.GET_PROPERTIES:
                # The server's seeded sampling asks each node once for its partition id:
                # answered from the node config, without loading the client's data.
                properties = node_properties(context)
                return Message(content=getpropertiesres_to_recorddict(properties), reply_to=message)
            return handle_legacy_message_from_msgtype(
                lambda context: self.client_fn(context, message), message, context
            )
        return self.app(message, context)


def answering_legacy(
    app: ClientApp,
    client: Callable[[Context, Message], NumPyClient],
    config: Callable[[Context, Message], Any],
) -> ClientApp:
    """``app`` answering legacy messages too, with the NumPyClient ``client`` makes."""
    return LegacyAnswering(
        app, lambda context, message: client(context, message).to_client(), config
    )


class SecurelyWeighted(WrappedClient):
    """``client`` sending, as its example count, the weight SecAgg+ multiplies it by."""

    def __init__(self, client: NumPyClient, cfg: Any) -> None:
        super().__init__(client)
        self.cfg = cfg

    def fit(self, parameters: NDArrays, config: Config) -> FitAnswer:
        trained, num_examples, metrics = self.client.fit(parameters, config)
        return trained, self.secure_weight(trained, num_examples), metrics

    def secure_weight(self, trained: NDArrays, num_examples: int) -> int:
        """The weight SecAgg+ multiplies this client's model by (sent as num_examples),
        after checking that the masked sum can carry it and the model exactly enough.

        FedAvg's is ``n_i``; a uniform weight is ``secagg-max-weight`` itself (any common
        weight gives the plain mean, and the largest one is quantized most finely).
        """
        cfg = self.cfg
        rule_type = strategies.rule_type(cfg.strategy)
        per_example = secure_weight(rule_type, rule_type.Options.from_config(cfg)) == "examples"
        weight = num_examples if per_example else max(1, int(cfg.secagg_max_weight))
        if weight > cfg.secagg_max_weight:
            raise ValueError(
                f"secure aggregation: this client's weight {weight} exceeds "
                f"secagg-max-weight = {cfg.secagg_max_weight:g} and would overflow the masked "
                "sum: raise secagg-max-weight"
            )
        if not all(np.isfinite(a).all() for a in trained):
            raise ValueError(
                "secure aggregation: the model holds NaN or Inf, which the masked sum would "
                "turn into wrong finite values (and no server could reject them)"
            )
        largest = max((float(np.max(np.abs(a))) for a in trained if a.size), default=0.0)
        if largest > cfg.secagg_clipping_range:
            raise ValueError(
                f"secure aggregation: a model value of magnitude {largest:.3g} is outside "
                f"secagg-clipping-range = {cfg.secagg_clipping_range:g} and would be clipped "
                "in the masked sum: raise secagg-clipping-range"
            )
        return weight

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        return self.client.evaluate(parameters, config)


def securely_weighted(cfg: Any, client: NumPyClient) -> NumPyClient:
    """``client`` as SecAgg+ has it weigh itself (itself without secure aggregation)."""
    return SecurelyWeighted(client, cfg) if cfg.secure_aggregation else client
