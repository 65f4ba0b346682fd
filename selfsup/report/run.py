"""``report.md`` of a run directory: the loss and learning-rate curves, and the monitor curve and the per-epoch
table when epoch records were logged."""
from __future__ import annotations

from pathlib import Path

from selfsup.engine.rundir import check_entries, metrics_records
from selfsup.report.plots import curves, loss_curve, markdown_table


def run_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.md`` (and its PNGs) from ``metrics.jsonl`` and ``config.yaml``; returns its path."""
    run_dir = Path(run_dir)
    check_entries(run_dir)                 # report.md and the PNGs land in the run's own files only
    records = metrics_records(run_dir / "metrics.jsonl")        # selfsup's records only: a hand edit is skipped
    steps = [r for r in records if "loss" in r and not r.get("epoch_end")]
    epochs = [r for r in records if r.get("epoch_end")] if steps else []
    lines = [f"# Run {run_dir.name}", ""]
    config = run_dir / "config.yaml"
    if config.exists():
        lines += ["Settings (`config.yaml`):", "", "```", config.read_text().strip(), "```", ""]
    if not steps:
        lines += ["No training step was logged (an `--epochs 0` run saves the initial weights only)."]
    else:
        loss_curve(steps, run_dir / "loss.png")
        curves(steps, ["lr"], run_dir / "lr.png", "learning rate", x="step")
        speed = sum(r["images_per_s"] for r in steps) / len(steps)
        lines += [f"{steps[-1]['step']} steps, last loss {steps[-1]['loss']:.4f}, {speed:.0f} images/s on average.", "",
                  "![loss](loss.png)", "", "![learning rate](lr.png)", ""]
        monitored = [r for r in epochs if "monitor_knn_top1" in r]
        if monitored:
            curves(monitored, ["monitor_knn_top1"], run_dir / "monitor.png", "kNN top-1 on the monitor subset")
            lines += ["![monitor](monitor.png)", ""]
        if epochs:
            keys = sorted({k for r in epochs for k in r} - {"epoch", "epoch_end"})
            merged: dict[int, dict] = {}
            for r in epochs:
                merged.setdefault(r["epoch"], {"epoch": r["epoch"] + 1}).update({k: r[k] for k in keys if k in r})
            lines += ["Per epoch:", "", markdown_table(list(merged.values()), ["epoch"] + keys), ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
