"""The report of a comparison (report.md, a self-contained report.html, matplotlib PNGs), rebuilt from the
records: `build_report(DIR)`."""

from agentqat.report.render import build_report

__all__ = ["build_report"]
