"""Markdown tables and PNG plots of runs (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path, epoch_end: bool = False) -> list[dict]:
    """The per-step records of a run's metrics.jsonl, or with ``epoch_end`` the per-epoch ones (the engine's own
    records only: a line cut by a kill, or edited by hand, is skipped, ``metrics_records``)."""
    from selfsup.engine.rundir import metrics_records

    return [r for r in metrics_records(Path(path)) if bool(r.get("epoch_end")) == epoch_end]


def _finish(plt, fig, ax, png: str | Path, legend_size: int = 8) -> None:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def curves(records: list[dict], keys: list[str], png: str | Path, title: str, x: str = "epoch") -> None:
    """One line per key against ``x`` (e.g. prototypes in use per epoch)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        pts = [(r[x], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    ax.set_xlabel(x)
    ax.set_title(title)
    _finish(plt, fig, ax, png)


def series_plot(series: dict[str, list[tuple]], xlabel: str, ylabel: str, png: str | Path) -> None:
    """One line per label of (x, y) points; a log x axis when every x is a positive number (Goyal et
    al. 2019's scaling figures), else the x values as categories."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    numeric = all(isinstance(v, (int, float)) and v > 0 for pts in series.values() for v, _ in pts)
    for label, pts in series.items():
        pts = sorted(pts, key=lambda p: p[0] if numeric else str(p[0]))
        ax.plot([p[0] if numeric else str(p[0]) for p in pts], [p[1] for p in pts], marker="o", label=label)
    if numeric:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _finish(plt, fig, ax, png, legend_size=7)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def loss_curve(metrics: list[dict], png: str | Path, title: str = "training loss") -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def loss_curves(runs: dict[str, list[dict]], png: str | Path) -> None:
    """One panel per run: its training loss against the step (losses of different methods differ in scale)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3), squeeze=False)
    for ax, (name, records) in zip(axes[0], runs.items()):
        pts = [(r["step"], r["loss"]) for r in records if "loss" in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts])
        ax.set_title(f"{name} loss", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def accuracy_bars(results: dict[str, dict[str, float]], png: str | Path, title: str = "top-1 accuracy",
                  ylabel: str = "top-1 (%)") -> None:
    """``results[model][protocol] = top-1``: grouped bars, one group per protocol (in first-seen order)."""
    plt = _plt()
    models = list(results)
    protocols = list(dict.fromkeys(p for r in results.values() for p in r))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(1.6 + 1.6 * len(protocols), 3.5))
    for i, model in enumerate(models):
        xs = [j + i * width for j in range(len(protocols))]
        vals = [100 * results[model].get(p, 0.0) for p in protocols]
        bars = ax.bar(xs, vals, width, label=model)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(protocols))], protocols)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
