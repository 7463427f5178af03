"""Polishing a strategy (agentqat polish): block-wise QAT of its weights (agentqat.polish), then the unpolished and
the polished strategy played as matches on the arena's last stage (every window set, the arena's seed: the windows
its search ranked it on) and on the corpus's held-out split; the final strategy is the one of lower held-out KL
(the polished one unless polishing made it worse there), and only it is played on the test split, once. Nothing is
chosen on the test split. And the ablation table over ordering, curriculum and learnable pow2 scales at 3 and 2
bits (on the arena's last stage: the search's windows, never the test split).

The ablation's rows go to DIR/ablation.jsonl (one line per polish, with the arena and settings it ran with), so
that a killed ablation resumes.

Records, in the polish directory: polish.json (settings, strategy, each block's losses, the choice on held-out text:
`selected`), results.jsonl (the matches on the arena's stage, then the final strategy's on the test split; polished
ones carry the id "<strategy id>-polished" and `extra.polished`), heldout.jsonl (both on the held-out split),
weights.safetensors (the
polished weights, dequantized: every value on its module's grid; and per module NAME.scale and NAME.zero, one row
per group; or, for a module trained inside a GGML type, NAME.ggml: its blocks as the GGUF stores them, the type in
the file's metadata `ggml_types`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from agentqat import defaults
from agentqat.arena.config import Arena
from agentqat.arena.match import Workbench
from agentqat.arena.request import MatchRequest
from agentqat.arena.result import MatchResult
from agentqat.engines.ggml_blocks import encode
from agentqat.errors import UserError
from agentqat.polish.ggml_grid import GGML_SUFFIX, GGML_TYPES_KEY, NO_ENGINE, engine_levels
from agentqat.polish.ste import PolishedWeight
from agentqat.progress import Reporter
from agentqat.rundir.paths import ABLATION_FILE, HELDOUT_FILE, RESULTS_FILE
from agentqat.rundir.store import write_json_atomic

POLISHED = "polished"


@dataclass(frozen=True)
class PolishOutcome:
    """The unpolished and polished matches (arena stage, held-out split, and the test split for the one `selected`
    on held-out text: "polished" or "unpolished"), the polish, and where it is recorded."""

    document: dict
    unpolished: tuple[MatchResult, ...]
    polished: tuple[MatchResult, ...]
    polish: object  # agentqat.polish.Polished
    directory: Path
    selected: str = POLISHED


@dataclass(frozen=True)
class AblationRow:
    """One polish of the ablation: its switches and the unpolished and polished results on the arena's last stage."""

    bits: int
    pow2: bool
    order: str
    curriculum: bool
    unpolished: tuple[MatchResult, ...]
    polished: tuple[MatchResult, ...]
    seconds: float


def best_document(run_directory: Path) -> dict:
    """Returns the strategy ranked first on the last stage of the evolve run in `run_directory`."""
    from agentqat.rundir.journal import read_run

    view = read_run(Path(run_directory))
    if not view.stages:
        raise UserError(f"run {run_directory} has no match results yet", "polish a run that has played, or pass --strategy")
    best = list(view.stages.values())[-1][0]
    if best.strategy_id not in view.documents:
        raise UserError(f"run {run_directory} does not record the document of its best strategy {best.strategy_id}", "pass it with --strategy")
    return view.documents[best.strategy_id]


def uniform_document(bits: int, pow2: bool, rounding: str = "gptq") -> dict:
    """Returns the uniform int strategy of the ablation: `bits`, group 64, asymmetric, fp16 or pow2 scales."""
    from agentqat.strategy.document import SCHEMA_VERSION

    weight = {"bits": bits, "group_size": 64, "symmetric": False, "rounding": rounding, "scale": "pow2" if pow2 else "fp16"}
    return {"schema_version": SCHEMA_VERSION, "name": f"uniform-{rounding}-w{bits}g64{'-pow2' if pow2 else ''}", "default": {"weight": weight}, "rules": []}


def play_stage(bench: Workbench, document: dict, overrides=None) -> tuple[MatchResult, ...]:
    """Returns `document` played on every window set of the arena's last stage at its seed (`overrides`: polished
    weights, and the results marked polished)."""
    stage = bench.arena.stages[-1]
    results = tuple(
        bench.play(MatchRequest(document, stage.name, bench.arena.seed, window_set), overrides)
        for window_set in range(stage.window_sets)
    )
    return tuple(_marked(result) for result in results) if overrides is not None else results


def _marked(result: MatchResult) -> MatchResult:
    return dataclasses.replace(
        result, strategy_id=f"{result.strategy_id}-{POLISHED}", strategy_name=f"{result.strategy_name} ({POLISHED})",
        extra={**result.extra, POLISHED: True},
    )  # fmt: skip


def _polished(bench: Workbench, document: dict, settings, sensitivities, reporter: Reporter | None):
    """Returns the polish of `document` on the bench's model and calibration windows."""
    from agentqat.data import sample_windows
    from agentqat.polish import polish_model
    from agentqat.strategy.document import parse_strategy
    from agentqat.strategy.resolve import needs_calibration, resolve_strategy

    if bench.placement.sequential:
        raise UserError("polish trains blocks of a model held whole on the device, not layer by layer", "drop --sequential (and the arena's sequential)")
    resolved = resolve_strategy(parse_strategy(document), bench.loaded.facts)  # StrategyError: one line per problem
    calibration = bench.calibration(bench.arena.calibration_windows) if needs_calibration(resolved) else None
    windows = sample_windows(
        bench.calibration_ids, bench.arena.window_tokens, settings.windows, bench.arena.seed, bos=bench.loaded.bos.window_token
    )
    stats = calibration.stats if calibration else None
    engine = engine_levels(bench.engine_files(), resolved, bench.engine_embedding()) if bench.arena.engine is not None else NO_ENGINE
    return polish_model(bench.loaded.model, resolved, stats, windows, settings, sensitivities, reporter, engine)


def polished_tensors(weights: Mapping[str, PolishedWeight]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Returns what weights.safetensors holds (see the module docstring): tensors, and the metadata naming the GGML
    type of each module trained inside one."""
    tensors, types = {}, {}
    for name, polished in weights.items():
        tensors[name] = polished.weight.contiguous()
        if polished.blocks is not None:
            tensors[f"{name}{GGML_SUFFIX}"], types[name] = torch.from_numpy(encode(polished.blocks)), polished.blocks.type_name
        else:
            tensors[f"{name}.scale"], tensors[f"{name}.zero"] = polished.grid.scale.contiguous(), polished.grid.zero.contiguous()
    return tensors, {GGML_TYPES_KEY: json.dumps(types, sort_keys=True)}


def layer_sensitivities(bench: Workbench, reporter: Reporter | None = None) -> dict[int, float]:
    """Returns the arena's per-layer sensitivities (agentqat.arena.probes: cached per arena, else played here)."""
    from agentqat.arena.probes import shared_sensitivities

    play = lambda requests: [bench.play(request) for request in requests]  # noqa: E731 - an in-process player
    return shared_sensitivities(play, bench.arena, bench.loaded.facts, defaults.cache_dir(), reporter).values


def select(unpolished: Sequence[MatchResult], polished: Sequence[MatchResult]) -> tuple[str, str]:
    """Returns which of the two is the final strategy, chosen on their held-out matches, and why: "polished" when
    its mean KL there is lower than the unpolished strategy's (or the unpolished one failed), else "unpolished"."""
    def kl(results: Sequence[MatchResult]) -> float | None:
        values = [r.quality.kl for r in results if r.quality is not None and not r.failed]
        return sum(values) / len(values) if values and len(values) == len(results) else None

    before, after = kl(unpolished), kl(polished)
    if after is None:
        return "unpolished", "the polished strategy failed on held-out text"
    if before is None or after < before:
        return POLISHED, f"held-out KL {after:.4g} against {before:.4g} unpolished" if before is not None else "the unpolished strategy failed on held-out text"
    return "unpolished", f"held-out KL {after:.4g} polished is not below {before:.4g} unpolished"


def polish_strategy(
    document: dict, arena: Arena, settings, directory: Path, test_windows: int = defaults.TEST_WINDOWS,
    reporter: Reporter | None = None, heldout_windows: int = defaults.TEST_WINDOWS,
) -> PolishOutcome:  # fmt: skip
    """Returns the polish of `document` on `arena` with `settings` (agentqat.polish.PolishSettings) and its
    matches, recorded in `directory` (see the module docstring): both played on the arena's last stage and on
    `heldout_windows` windows of the held-out split, the final one (`select`) on `test_windows` of the test split
    (0 leaves the test split out)."""
    from safetensors.torch import save_file

    from agentqat.progress import phase
    from agentqat.study.unseen import HELDOUT_STAGE, UnseenBench

    directory = Path(directory)
    if (directory / RESULTS_FILE).exists():
        raise UserError(f"{directory} already holds a polish", "pick another --out, or remove it")
    if heldout_windows < 1:
        raise UserError("the final strategy is chosen on held-out text: --heldout-windows must be at least 1", "e.g. --heldout-windows 16")
    bench = Workbench(arena, reporter=reporter)
    bench.prepare(arena.seed)
    sensitivities = layer_sensitivities(bench, reporter) if settings.order == "sensitivity" else None
    with phase(reporter, "playing the unpolished strategy"):
        unpolished = play_stage(bench, document)
    polish = _polished(bench, document, settings, sensitivities, reporter)
    weights = {name: polished.weight for name, polished in polish.weights.items()}
    with phase(reporter, "playing the polished strategy"):
        polished = play_stage(bench, document, weights)
    del bench
    heldout = UnseenBench(arena, HELDOUT_STAGE, windows=heldout_windows, reporter=reporter)
    with phase(reporter, "both on the held-out split", total=2) as step:
        heldout_unpolished = play_stage(heldout, document)
        step()
        heldout_polished = play_stage(heldout, document, weights)
        step()
    del heldout
    selected, why = select(heldout_unpolished, heldout_polished)
    final: tuple[MatchResult, ...] = ()
    if test_windows:
        test = UnseenBench(arena, windows=test_windows, reporter=reporter)
        with phase(reporter, f"the final strategy ({selected}) on the test split, once"):
            final = play_stage(test, document, weights if selected == POLISHED else None)
    directory.mkdir(parents=True, exist_ok=True)
    tensors, metadata = polished_tensors(polish.weights)
    save_file(tensors, str(directory / "weights.safetensors"), metadata)
    write_json_atomic(directory / "polish.json", {
        "arena": arena.name, "strategy": document, "settings": dataclasses.asdict(settings), "seconds": polish.seconds,
        "blocks": [dataclasses.asdict(block) for block in polish.blocks], "sensitivities": sensitivities,
        "selected": {"strategy": selected, "on": HELDOUT_STAGE, "why": why, "test_windows": test_windows},
    })  # fmt: skip
    (directory / HELDOUT_FILE).write_text("".join(result.to_json() + "\n" for result in heldout_unpolished + heldout_polished))
    (directory / RESULTS_FILE).write_text("".join(result.to_json() + "\n" for result in unpolished + polished + final))
    if selected == POLISHED:
        unpolished, polished = unpolished + heldout_unpolished, polished + heldout_polished + final
    else:
        unpolished, polished = unpolished + heldout_unpolished + final, polished + heldout_polished
    return PolishOutcome(document, unpolished, polished, polish, directory, selected)


def run_ablation(
    arena: Arena, settings, bits: Sequence[int] = defaults.POLISH_ABLATE_BITS, directory: Path | None = None,
    reporter: Reporter | None = None,
) -> list[AblationRow]:  # fmt: skip
    """Returns the ablation: uniform GPTQ g64 at each of `bits`, with fp16 or learnable pow2 scales, polished in
    natural or sensitivity order, with and without the curriculum (`settings` for the rest), each against the
    unpolished strategy on the arena's last stage. Each row is appended to DIR/ablation.jsonl as it ends, and a
    rerun with the same arena and settings plays only the rows missing there (a killed ablation resumes)."""
    from agentqat.progress import phase

    recorded = _recorded_rows(directory, arena, settings) if directory is not None else {}
    bench = None
    rows = []
    for width, pow2 in itertools.product(bits, (False, True)):
        document = uniform_document(width, pow2)
        variants = [dataclasses.replace(settings, order=order, curriculum=curriculum)
                    for order, curriculum in itertools.product(("natural", "sensitivity"), (False, True))]  # fmt: skip
        unpolished = next((row.unpolished for row in recorded.values() if (row.bits, row.pow2) == (width, pow2)), None)
        for variant in variants:
            key = (width, pow2, variant.order, variant.curriculum)
            if key in recorded:
                rows.append(recorded[key])
                continue
            if bench is None:
                bench = Workbench(arena, reporter=reporter)
                bench.prepare(arena.seed)
                sensitivities = layer_sensitivities(bench, reporter)
            if unpolished is None:
                with phase(reporter, f"playing {document['name']}"):
                    unpolished = play_stage(bench, document)
            polish = _polished(bench, document, variant, sensitivities, reporter)
            with phase(reporter, f"playing {document['name']} polished ({variant.order} order{', curriculum' * variant.curriculum})"):
                polished = play_stage(bench, document, {name: w.weight for name, w in polish.weights.items()})
            rows.append(AblationRow(width, pow2, variant.order, variant.curriculum, unpolished, polished, polish.seconds))
            if directory is not None:
                _append_row(directory, arena, settings, rows[-1])
    return rows


def _settings_record(arena: Arena, settings) -> dict:
    """Returns what an ablation row's numbers depend on besides its switches: the arena and the polish settings."""
    from agentqat.arena.probes import arena_key

    fixed = {key: value for key, value in dataclasses.asdict(settings).items() if key not in ("order", "curriculum")}
    return {"arena": arena.name, "arena_key": arena_key(arena), "settings": fixed}


def _append_row(directory: Path, arena: Arena, settings, row: AblationRow) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    line = {**_settings_record(arena, settings), "bits": row.bits, "pow2": row.pow2, "order": row.order, "curriculum": row.curriculum,
            "seconds": row.seconds, "unpolished": [dataclasses.asdict(r) for r in row.unpolished], "polished": [dataclasses.asdict(r) for r in row.polished]}  # fmt: skip
    with open(directory / ABLATION_FILE, "a") as handle:
        handle.write(json.dumps(line, sort_keys=True) + "\n")


def _recorded_rows(directory: Path, arena: Arena, settings) -> dict[tuple, AblationRow]:
    """Returns the rows DIR/ablation.jsonl holds, by (bits, pow2, order, curriculum); UserError when they were
    measured with another arena or other settings."""
    path = Path(directory) / ABLATION_FILE
    if not path.is_file():
        return {}
    expected, rows = _settings_record(arena, settings), {}
    for number, text in enumerate(path.read_text().splitlines(), 1):
        try:
            line = json.loads(text)
            row = AblationRow(int(line["bits"]), bool(line["pow2"]), str(line["order"]), bool(line["curriculum"]),
                              tuple(MatchResult.from_dict(r) for r in line["unpolished"]),
                              tuple(MatchResult.from_dict(r) for r in line["polished"]), float(line["seconds"]))  # fmt: skip
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path}:{number} is not an ablation row ({error})", "remove the line, or pick another --out") from None
        if {key: line.get(key) for key in expected} != json.loads(json.dumps(expected)):
            raise UserError(f"{path} holds an ablation of other settings or another arena", "pick another --out, or rerun with its settings")
        rows[(row.bits, row.pow2, row.order, row.curriculum)] = row
    return rows
