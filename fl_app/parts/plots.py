"""A run's curves as PNG files (matplotlib): at the end of a run, its folder gets
``accuracy.png`` (central and federated accuracy per round, when there is an accuracy: not
for regression) and ``loss.png`` (central, federated and the clients' training loss)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fl_app.kit.results import NDArrays, RoundRecord, RunListener, finite


def plot_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    *,
    ylabel: str,
    title: str,
    path: Path,
    bands: Mapping[str, Sequence[tuple[int, float, float]]] | None = None,
) -> None:
    """One line per named curve of (round, value) points, saved as a PNG; a curve's
    ``bands`` entry of (round, low, high) points is shaded around it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=label)
            band = (bands or {}).get(label)
            if band:
                rounds, low, high = zip(*band, strict=True)
                ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    values = [v for points in curves.values() for _, v in points]
    if "loss" in ylabel and values and min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")  # losses often fall by orders of magnitude
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="round", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


class RunPlots(RunListener):
    """Draws the run's accuracy and loss curves into ``directory`` once it is done."""

    def __init__(self, cfg: Any, directory: Path):
        self.cfg, self.directory = cfg, directory

    def run_done(self, parameters: NDArrays, rounds: Sequence[RoundRecord]) -> None:
        title = f"{self.cfg.strategy} on {self.cfg.dataset} ({self.cfg.partitioner})"

        def points(key: str) -> list[tuple[int, float]]:
            return [(r["round"], float(r[key])) for r in rounds if finite(r.get(key))]

        for metric in ("accuracy", "loss"):  # accuracy.png when there is an accuracy
            curves = {
                "central (server test set)": points(f"central_{metric}"),
                "federated (clients' validation)": points(f"federated_{metric}"),
            }
            if metric == "loss":
                curves["clients' training"] = points("train_loss")
            if metric == "loss" or any(curves.values()):
                path = self.directory / f"{metric}.png"
                plot_curves(curves, ylabel=metric, title=title, path=path)
