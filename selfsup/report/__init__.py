"""Results tables and plots."""
from selfsup.report.plots import accuracy_bars, curves, loss_curve, markdown_table, read_metrics
from selfsup.report.run import run_report

__all__ = ["accuracy_bars", "curves", "loss_curve", "markdown_table", "read_metrics", "run_report"]
