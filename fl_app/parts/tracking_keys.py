"""The config key of the optional part ``tracking`` (:mod:`fl_app.parts.tracking`).

``RunConfig`` inherits :class:`TrackingKeys`: that base class is the part's only
registration (docs/template.md); a copy without it has no ``tracker`` key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fl_app.kit.keys import Registry, option

if TYPE_CHECKING:
    from pathlib import Path

    from fl_app.kit.results import RunListener

TRACKERS = Registry("fl_app.parts.tracking", "TRACKERS")


@dataclass(frozen=True)
class TrackingKeys:
    tracker: str = option(
        "none",
        "experiment tracking of each round's metrics: tensorboard (<run dir>/tensorboard), "
        "mlflow (<output-dir>/mlflow.db), wandb (offline, <run dir>/wandb); "
        'needs pip install -e ".[tracking]"',
        choices=TRACKERS,
    )

    def part_listeners(self, directory: Path) -> list[RunListener]:
        """The tracker ``tracker`` names (imported only now: it may import torch)."""
        from fl_app.kit.config import RunConfig
        from fl_app.parts.tracking import start_tracker

        assert isinstance(self, RunConfig)
        listeners: list[RunListener] = super().part_listeners(directory)  # type: ignore[misc]
        return [*listeners, start_tracker(self, directory)]
