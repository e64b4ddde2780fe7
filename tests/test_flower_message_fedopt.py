# Copyright 2025 Flower Labs GmbH. All Rights Reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
# ==============================================================================
"""Flower's own tests of its class, run on strategies.message.FedAdagrad, FedAdam and FedYogi:
adap/flower's framework/py/flwr/serverapp/strategy/fedopt_test.py (commit fdef7af), its
imports changed only. Its test of FedOpt's private method is left out, and pytest parametrizes
instead of ``parameterized``."""

import numpy as np
import pytest
from flwr.common import ArrayRecord

from strategies.message import FedAdagrad, FedAdam, FedYogi
from tests.test_flower_message_fedavgm import create_mock_reply


@pytest.mark.parametrize("strategy_cls", [FedAdagrad, FedAdam, FedYogi])
def test_fedopt_strategies_aggregate_scalar_arrays(strategy_cls: type) -> None:
    """Test FedOpt-based strategies with scalar-shaped arrays."""
    strategy = strategy_cls()
    strategy.current_arrays = {"0": np.array(0.0)}
    replies = [
        create_mock_reply(ArrayRecord([np.array(1.0)]), num_examples=1),
        create_mock_reply(ArrayRecord([np.array(3.0)]), num_examples=2),
    ]

    actual, _ = strategy.aggregate_train(1, replies)

    assert actual is not None
    scalar_weight = actual.to_numpy_ndarrays()[0]
    assert scalar_weight.shape == ()
    assert np.isfinite(scalar_weight)
