"""Everything the terminal shows; the only package that imports rich.

    tables.py   reports and tables printed once (facts, validation, quantize, leaderboards, runs)
    studies.py  a polish, the polish ablation, the sensitivity map
    live.py     what moves while work runs: phases (progress.Reporter), match progress, the evolve live view
"""

from agentqat.ui.live import EvolveView, MatchProgress, PhaseView
from agentqat.ui.studies import print_ablation, print_polish, print_sensitivity
from agentqat.ui.tables import (
    console,
    facts_dict,
    pareto_front,
    print_cache_stats,
    print_engine_costs,
    print_engine_eval,
    print_engines,
    print_evolve_outcome,
    print_finished,
    print_info,
    print_invalid,
    print_leaderboard,
    print_quantize,
    print_run,
    print_valid,
    quantize_report,
)

__all__ = [
    "EvolveView", "MatchProgress", "PhaseView", "console", "facts_dict", "pareto_front", "print_cache_stats", "print_engine_costs", "print_engine_eval", "print_engines",
    "print_evolve_outcome", "print_finished", "print_info", "print_invalid", "print_leaderboard", "print_quantize",
    "print_run", "print_valid", "quantize_report", "print_ablation", "print_polish", "print_sensitivity",
]  # fmt: skip
