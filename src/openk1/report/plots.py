"""PNG plots of a run's metrics (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def plot_tradeoff(points: list[dict[str, Any]], reference: dict[str, Any], out_png: str | Path,
                  title: str = "") -> Path:
    """Accuracy vs mean response tokens (the k1.5 report's Figure 7): one labelled point per
    entry of `points` and the reference (the long-CoT model) as a star with guide lines; each
    entry has `name`, `accuracy` (0..1) and `mean_tokens`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.axhline(100 * reference["accuracy"], color="grey", linestyle="--", linewidth=0.8)
    ax.axvline(reference["mean_tokens"], color="grey", linestyle="--", linewidth=0.8)
    ax.scatter([reference["mean_tokens"]], [100 * reference["accuracy"]], marker="*", s=220,
               color="black", label=reference.get("name", "long-CoT"), zorder=3)
    for point in points:
        ax.scatter([point["mean_tokens"]], [100 * point["accuracy"]], s=70, label=point["name"], zorder=3)
        ax.annotate(point["name"], (point["mean_tokens"], 100 * point["accuracy"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("mean response tokens (held-out)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or "long2short: accuracy vs response length", fontsize=10)
    fig.tight_layout()
    with atomic_file(out_png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(out_png)
