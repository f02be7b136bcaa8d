"""Loss and metric curves from a training run's metrics.jsonl, as a PNG (matplotlib, Agg backend)."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_metrics", "plot_metrics"]


def read_metrics(path) -> list[dict]:
    """The records of a JSONL metrics file, in order (blank lines skipped)."""
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not a JSON record: {err}") from None
    return records


def plot_metrics(metrics_path, png_path) -> Path:
    """Writes training losses (log scale, left) and validation MAE/RMSE (right) against the step.

    Returns the PNG path.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "count_loss", "map_loss"):
        points = [(r["step"], r[key]) for r in train if r.get(key) is not None and r[key] > 0]
        if points:
            ax_loss.plot(*zip(*points), label=key)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    if any(line.get_xdata().size for line in ax_loss.get_lines()):
        ax_loss.set_yscale("log")
        ax_loss.legend()
    for key in ("mae", "rmse"):
        points = [(r["step"], r[key]) for r in val if r.get(key) is not None]
        if points:
            ax_val.plot(*zip(*points), marker="o", label=key)
    ax_val.set(xlabel="step", ylabel="heads", title="validation count error")
    if val:
        ax_val.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
