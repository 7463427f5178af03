"""Baseline runs (the standard methods' matrix, recorded and resumable) and single-strategy quantization on
the arena's Workbench."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from agentqat import defaults
from agentqat.arena.config import Arena, Stage
from agentqat.errors import UserError
from agentqat.progress import Reporter
from agentqat.rundir.journal import read_results
from agentqat.rundir.manifest import Manifest, check_windows, package_versions, read_manifest, windows_bos
from agentqat.rundir.paths import MANIFEST_FILE
from agentqat.rundir.store import RunStore
from agentqat.session.resources import Resources

QUANTIZE_STAGE = "quantize"
QUANTIZE_SECONDS = 7 * 24 * 3600.0  # a single `quantize` is not a match in a tournament: no time limit to speak of


@dataclass(frozen=True)
class BaselineOutcome:
    """A baseline run's end: its stage's leaderboard, the workers' cache counters and the replayed matches."""

    manifest: Manifest
    rows: tuple
    cache_stats: tuple[dict, ...]
    replayed: int


def baseline_manifest(arena: Arena, stage: str, seed: int, requests: int) -> Manifest:
    """Returns the manifest of a baseline run of `requests` matches on one stage and seed."""
    return Manifest(kind="baseline", arena=arena, stage=arena.stage(stage).name, seed=seed, requests=requests, versions=package_versions(),
                    window_bos=windows_bos(arena))  # fmt: skip


def run_baseline(
    directory: Path,
    arena: Arena,
    requests: Sequence,
    stage: str,
    seed: int,
    *,
    resources: Resources | None = None,
    workers: int = defaults.EVOLVE_WORKERS,
    ray_address: str | None = None,
    on_result: Callable | None = None,
    reporter: Reporter | None = None,
) -> BaselineOutcome:
    """Returns the baseline matrix `requests` played on `stage` (arena_baselines.baseline_requests), recorded
    in `directory`; a run recorded there before is resumed (its matches are not played again)."""
    from agentqat.arena.recorded import RecordedPlayer
    from agentqat.arena.tournament import play_tournament

    if not requests:
        raise UserError("the baseline selection is empty", "check the methods and bits")
    directory = Path(directory)
    if (directory / MANIFEST_FILE).exists():
        store, manifest = RunStore.open(directory), read_manifest(directory)
        if manifest.kind != "baseline":
            raise UserError(f"{directory} is a {manifest.kind} run, not a baseline run", "pick another run name")
        check_windows(directory, manifest)
        read_results(store)
    else:
        manifest = baseline_manifest(arena, stage, seed, len(requests))
        store = RunStore.create(directory, manifest.model_dump(mode="json"))
    own = resources or Resources(arena, workers, ray_address, reporter=reporter)
    with own if resources is None else nullcontext(resources):
        player = RecordedPlayer(own.pool.run, store, on_result=on_result)
        outcome = play_tournament(player, arena, requests, seed, stages=[stage])
        stats = own.pool.cache_stats()
    return BaselineOutcome(manifest, tuple(outcome.final.rows), tuple(stats), player.replayed)


def quantize_arena(model: str, corpus: str, windows: int, window_tokens: int, calibration_windows: int, seed: int) -> Arena:
    """Returns the one-stage arena that `quantize` plays a strategy on: `windows` evaluation windows."""
    return Arena(
        name=QUANTIZE_STAGE, model=model, corpus=corpus, seed=seed, window_tokens=window_tokens,
        calibration_windows=calibration_windows, match_seconds=QUANTIZE_SECONDS, compute_threads=defaults.TORCH_THREADS,
        bits_budget=16, collapse_ratio=float("inf"), stages=(Stage(name=QUANTIZE_STAGE, windows=windows),),
    )  # fmt: skip


def check_servable(document: dict, model: str, target: str) -> None:
    """Returns None when the deployment target's engine runs the strategy on the model; UserError naming every
    module it cannot run (with the fix) otherwise."""
    from agentqat.models import load_facts
    from agentqat.strategy import deploy
    from agentqat.strategy.document import parse_strategy
    from agentqat.strategy.resolve import resolve_strategy

    if target == deploy.ANY:
        return
    facts = load_facts(model)
    lines = deploy.problems(resolve_strategy(parse_strategy(document), facts), facts, target)
    if lines:
        raise UserError(f"not servable on {target}: " + " | ".join(lines), "change those modules as each line says, or pick another --deploy target")


def quantize_one(document: dict, arena: Arena, reporter: Reporter | None = None):
    """Returns the MatchResult of one strategy document played in process on the arena's Workbench (model,
    calibration and base references as every match has them); UserError when the match could not be played."""
    from agentqat.arena.match import Workbench
    from agentqat.arena.request import MatchRequest
    from agentqat.progress import phase

    workbench = Workbench(arena, reporter=reporter)
    workbench.prepare(arena.seed)
    with phase(reporter, "quantizing and evaluating the strategy"):
        result = workbench.play(MatchRequest(document, QUANTIZE_STAGE, arena.seed))
    if result.quality is None:
        raise UserError(f"the strategy could not be evaluated: {result.outcome}: {result.message}", "check the strategy")
    return result
