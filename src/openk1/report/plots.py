"""PNG plots of a run's metrics (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

from pathlib import Path

from openk1.report.run_dir import atomic_file, read_metrics


def plot_curves(metrics_path: str | Path, keys: list[str], out_png: str | Path, title: str = "") -> Path:
    """One panel per metric key, x = step; keys absent from the metrics are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    series = {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))] for k in keys}
    series = {k: v for k, v in series.items() if v}
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(4 * max(1, len(series)), 3.2), squeeze=False)
    for ax, (key, points) in zip(axes[0], series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_file(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(out_png)
