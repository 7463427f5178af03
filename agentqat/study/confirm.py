"""A comparison's final winners confirmed on a fuller arena than the study arena they were searched on (issue 11:
a cheap study arena for the search, its winners confirmed on the full arena), beside the shared prior.

Each run's rank-1 winner, and each document of the shared prior (the uniform strategies every arm started from),
is played once on the full arena's last stage: its window sets pooled into one set of the same windows (so one
result per strategy), with the full arena's calibration and level database, no cloze or QA. Those windows come
from the evaluation split (search data, though not the windows the study arena selected on); the test split
stays the report's unseen check.

Records: DIR/confirm/results.jsonl, one MatchResult per (run, strategy), stage "confirm:<arena name>", with
`extra` naming the run, its generator and seed and the winner's rank; the prior's rows have run "prior".
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from agentqat.arena.config import Arena, Stage
from agentqat.arena.match import Workbench
from agentqat.arena.request import MatchRequest, request_id
from agentqat.arena.result import MatchResult
from agentqat.progress import Reporter, phase
from agentqat.rundir.journal import read_results
from agentqat.rundir.paths import CONFIRM_DIR, MANIFEST_FILE
from agentqat.rundir.store import RunStore
from agentqat.study.unseen import REEVALUATION_SECONDS, run_directories, winners

PRIOR_RUN = "prior"


def confirm_stage(arena: Arena) -> str:
    """Returns the stage name of confirmations on `arena`: "confirm:<arena name>"."""
    return f"confirm:{arena.name}"


def pooled_arena(arena: Arena) -> Arena:
    """Returns the arena with its last stage's window sets pooled into one set of the same windows (windows are
    slots [offset, offset + count) of one seeded order, so one set of windows x sets covers every set), renamed
    `confirm_stage(arena)`, without cloze or QA, and without a time limit."""
    last = arena.stages[-1]
    pooled = Stage(name=confirm_stage(arena), windows=last.windows * last.window_sets)
    return arena.model_copy(update={"stages": (*arena.stages[:-1], pooled), "match_seconds": REEVALUATION_SECONDS})


def read_confirmations(directory: Path) -> list[MatchResult]:
    """Returns the confirmations recorded in DIR/confirm/ (none when it does not exist)."""
    return read_results(RunStore(Path(directory) / CONFIRM_DIR))


def _prior_documents(directory: Path) -> list[dict]:
    """Returns the shared prior's documents, read from the comparison's first run's manifest."""
    manifest = json.loads((run_directories(directory)[0] / MANIFEST_FILE).read_text())
    return list(manifest.get("prior") or [])


def confirm_winners(directory: Path, arena: Arena, reporter: Reporter | None = None) -> list[MatchResult]:
    """Returns every confirmation of the comparison's rank-1 winners and shared prior on `arena`, playing only
    those not recorded yet (one Workbench, the model loaded once, and only when something is left to play)."""
    store = RunStore(Path(directory) / CONFIRM_DIR)
    store.directory.mkdir(parents=True, exist_ok=True)
    done = {(r.extra["run"], r.strategy_id) for r in read_confirmations(directory)}
    pooled = pooled_arena(arena)
    todo = [(w.run, w.document, {"generator": w.generator, "run_seed": w.seed, "rank": w.rank}) for w in winners(directory, top=1)]
    todo += [(PRIOR_RUN, document, {"generator": PRIOR_RUN, "run_seed": None, "rank": None}) for document in _prior_documents(directory)]
    requests = [(run, MatchRequest(document, confirm_stage(arena), pooled.seed), extra) for run, document, extra in todo]
    requests = [(run, request, extra) for run, request, extra in requests if (run, request_id(request)) not in done]
    if requests:
        bench = Workbench(pooled, worker="confirm", reporter=reporter)
        with phase(reporter, f"confirming winners on {arena.name}", total=len(requests)) as step:
            for run, request, extra in requests:
                store.append("results", {**asdict(bench.play(request)), "extra": {"run": run, **extra}})
                step()
    return read_confirmations(directory)
