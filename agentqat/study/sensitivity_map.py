"""The sensitivity map (agentqat sensitivity): per decoder layer and per module role, three measures of how much
quantizing it costs, and how well they agree.

- Fisher: the diagonal Fisher information of the language-model loss on FISHER_WINDOWS calibration windows
  (agentqat.study.fisher), summed over the layer's (role's) weights;
- gradient norm: the norm of the mean gradient, summed the same way;
- KL: the KL to the base model on the arena's first stage when that layer (or that role in every layer) alone is
  quantized at each width of SENSITIVITY_BITS, with the probes of agentqat.arena.probes (RTN, asymmetric, the probe
  group); a failed probe counts twice the largest KL of its width.

Spearman rank correlations between the per-layer measures (Fisher, gradient norm, KL at each width). Measured once
per arena and kept in the cache directory (`sensitivity-map/<arena key>-b<bits>-f<windows>.json`, the heat map
PNG beside it), so runs read it: an evolve run with `sensitivity = "map"` in its manifest gives its generator the
map's per-layer KL at the widest probe width within the arena's budget.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

from agentqat import defaults
from agentqat.arena.config import Arena
from agentqat.arena.match import Workbench
from agentqat.arena.probes import arena_key, play_probes, probe_weight, sensitivities
from agentqat.data import sample_windows
from agentqat.errors import UserError
from agentqat.progress import Reporter
from agentqat.rundir.store import read_json_object, write_json_atomic
from agentqat.strategy.document import SCHEMA_VERSION
from agentqat.strategy.resolve import module_role_name
from agentqat.study.fisher import gradient_measures

CACHE_FOLDER = "sensitivity-map"
MEASURES = ("fisher", "gradient_norm")


@dataclass(frozen=True)
class Measures:
    """One layer's (or role's) Fisher information, gradient norm and KL per probe width."""

    fisher: float
    gradient_norm: float
    kl: dict[int, float]


@dataclass(frozen=True)
class SensitivityMap:
    """Per layer and per role measures, the per-layer rank correlations ("a~b": Spearman's rho, None when one
    side is constant), and what measuring them cost; `cached`: read back."""

    arena: str
    bits: tuple[int, ...]
    layers: dict[int, Measures]
    roles: dict[str, Measures]
    correlations: dict[str, float | None]
    matches: int
    tokens: int
    seconds: float
    cached: bool = False

    def layer_kl(self, bits: int) -> dict[int, float]:
        """Returns each layer's KL with that layer alone at `bits`."""
        return {layer: measures.kl[bits] for layer, measures in self.layers.items()}


def map_path(arena: Arena, bits: tuple[int, ...], fisher_windows: int, cache: Path) -> Path:
    """Returns where the arena's map for these probe widths and Fisher windows is kept."""
    return Path(cache) / CACHE_FOLDER / f"{arena_key(arena)}-b{'-'.join(map(str, bits))}-f{fisher_windows}.json"


def probe_set(facts, bits: tuple[int, ...]) -> dict[tuple, dict]:
    """Returns the probes: ("layer", layer, bits) and ("role", role, bits) -> the strategy quantizing only that."""
    def document(name: str, layers: str, modules: list[str], width: int) -> dict:
        weight = probe_weight(facts, width)
        return {"schema_version": SCHEMA_VERSION, "name": name, "default": {"weight": {"bits": 16}},
                "rules": [{"layers": layers, "modules": modules, "weight": weight}]}  # fmt: skip

    roles = sorted({module_role_name(info) for info in facts.linears})
    probes = {("layer", layer, b): document(f"probe-layer{layer}-w{b}", str(layer), ["all"], b) for b in bits for layer in range(facts.num_layers)}
    probes.update({("role", role, b): document(f"probe-{role}-w{b}", "all", [role], b) for b in bits for role in roles})
    return probes


def rank_correlations(layers: dict[int, Measures], bits: tuple[int, ...]) -> dict[str, float | None]:
    """Returns Spearman's rho between every two per-layer measures (Fisher, gradient norm, KL at each width)."""
    from scipy.stats import spearmanr

    order = sorted(layers)
    series = {name: [getattr(layers[layer], name) for layer in order] for name in MEASURES}
    series.update({f"kl@{b}": [layers[layer].kl[b] for layer in order] for b in bits})
    correlations = {}
    for a, b in combinations(series, 2):
        constant = len(set(series[a])) < 2 or len(set(series[b])) < 2
        correlations[f"{a}~{b}"] = None if constant or len(order) < 3 else float(spearmanr(series[a], series[b]).statistic)
    return correlations


def measure_map(bench, bits: tuple[int, ...], fisher_windows: int, reporter: Reporter | None = None) -> SensitivityMap:
    """Returns the map measured on `bench` (the arena's Workbench, prepared): Fisher and gradient norms on the
    first `fisher_windows` calibration windows, then every probe played on the first stage."""
    started = time.perf_counter()
    arena, facts = bench.arena, bench.loaded.facts
    windows = sample_windows(bench.calibration_ids, arena.window_tokens, fisher_windows, arena.seed, bos=bench.loaded.bos.window_token)
    gradients = gradient_measures(bench.loaded.model, windows, reporter)
    probes = probe_set(facts, bits)
    play = lambda requests: [bench.play(request) for request in requests]  # noqa: E731 - an in-process player
    detail = f"{len(probes)} matches: each layer and each role alone at {', '.join(map(str, bits))} bits"
    results = play_probes(play, arena, list(probes.values()), "sensitivity map probes", detail, reporter)
    kl = {}
    for b in bits:  # a failed probe counts twice the largest KL among the probes of its width
        kl.update(sensitivities({key: doc for key, doc in probes.items() if key[2] == b}, results))

    def measures(selected: list[str], kind: str, key) -> Measures:
        return Measures(sum(gradients.fisher[n] for n in selected), sum(gradients.gradient_norm[n] for n in selected),
                        {b: kl[(kind, key, b)] for b in bits})  # fmt: skip

    layers = {layer: measures([i.name for i in facts.linears if i.layer == layer], "layer", layer) for layer in range(facts.num_layers)}
    roles = {role: measures([i.name for i in facts.linears if module_role_name(i) == role], "role", role) for role in sorted({module_role_name(i) for i in facts.linears})}
    tokens = len(results) * arena.stages[0].windows * arena.window_tokens + fisher_windows * arena.window_tokens
    return SensitivityMap(arena.name, bits, layers, roles, rank_correlations(layers, bits), len(results), tokens, time.perf_counter() - started)


def read_map(path: Path) -> SensitivityMap:
    """Returns the map stored at `path` (marked cached)."""
    data = read_json_object(path)

    def measures(item: dict) -> Measures:
        return Measures(float(item["fisher"]), float(item["gradient_norm"]), {int(b): float(v) for b, v in item["kl"].items()})

    return SensitivityMap(
        data["arena"], tuple(data["bits"]), {int(k): measures(v) for k, v in data["layers"].items()},
        {k: measures(v) for k, v in data["roles"].items()}, data["correlations"], int(data["matches"]), int(data["tokens"]),
        float(data["seconds"]), cached=True,
    )  # fmt: skip


def shared_map(
    arena: Arena, bits: tuple[int, ...] = defaults.SENSITIVITY_BITS, fisher_windows: int = defaults.FISHER_WINDOWS,
    reporter: Reporter | None = None, cache: Path | None = None,
) -> tuple[SensitivityMap, Path]:  # fmt: skip
    """Returns the arena's map and where it is kept: read from the cache, else measured on a Workbench of the
    arena and stored there with its heat map (`<same name>.png`)."""
    path = map_path(arena, tuple(bits), fisher_windows, cache or defaults.cache_dir())
    if path.is_file():
        return read_map(path), path
    if not bits or any(not 2 <= b <= 8 for b in bits):
        raise UserError(f"probe widths {list(bits)} must be integer widths from 2 to 8", "e.g. --bits 2,3,4,8")
    bench = Workbench(arena, reporter=reporter)
    bench.prepare(arena.seed)
    measured = measure_map(bench, tuple(bits), fisher_windows, reporter)
    write_json_atomic(path, asdict(measured))
    sensitivity_heatmap(measured, path.with_suffix(".png"))
    return measured, path


def cached_map(arena: Arena, cache: Path | None = None) -> SensitivityMap:
    """Returns the arena's map from the cache: the one of the default widths and windows, else the latest measured;
    UserError when none is."""
    default = map_path(arena, defaults.SENSITIVITY_BITS, defaults.FISHER_WINDOWS, cache or defaults.cache_dir())
    measured = sorted(default.parent.glob(f"{default.name.split('-b')[0]}-b*.json"), key=lambda path: path.stat().st_mtime)
    if not measured:
        raise UserError(f"arena {arena.name} has no sensitivity map yet", f"measure it first: agentqat sensitivity --arena {arena.source or arena.name}")
    return read_map(default if default.is_file() else measured[-1])


def prior_values(sensitivity_map: SensitivityMap, bits_budget: float) -> dict[int, float]:
    """Returns the per-layer values generators take: the KL at the widest probe width within the budget (the
    narrowest width when none is)."""
    within = [b for b in sensitivity_map.bits if b <= bits_budget]
    return sensitivity_map.layer_kl(max(within) if within else min(sensitivity_map.bits))


def sensitivity_heatmap(sensitivity_map, path: Path) -> Path:
    """Returns `path`, where the heat map of the map's per-layer KL (layers by widths, log colour scale) is saved
    (matplotlib is imported here: it is slow to import and only this function needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    layers = sorted(sensitivity_map.layers)
    bits = list(sensitivity_map.bits)
    values = [[max(sensitivity_map.layers[layer].kl[b], 1e-6) for b in bits] for layer in layers]
    fig, ax = plt.subplots(figsize=(1.6 + 0.9 * len(bits), 1.2 + 0.22 * len(layers)))
    image = ax.imshow(values, aspect="auto", cmap="viridis", norm=LogNorm())
    ax.set_xticks(range(len(bits)), [f"{b} bits" for b in bits])
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_ylabel("layer")
    ax.set_title(f"KL, one layer quantized\n{sensitivity_map.arena}", fontsize=9)
    fig.colorbar(image, ax=ax, label="KL to base (nats/token)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
