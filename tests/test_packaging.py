"""The package stands on its own: built as a wheel and installed (not editable) into a fresh virtual
environment, it finds its arenas, prompt templates and corpus through importlib.resources, from outside the
source tree (the arenas and templates live at the checkout's top level, arena/ and prompts/, and setup.py maps them
into the wheel). Also the layout rules: no import cycles (imports inside functions included), `agentqat.serving`
below `agentqat.generators`, the strategy's spine (`agentqat.strategy`) below everything that searches or plays it,
modules kept small."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "agentqat"
MAX_MODULE_LINES = 400


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {_module_name(path, package.parent): path for path in sorted(package.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Returns the agentqat modules `path` imports anywhere: at module level, inside functions and under
    TYPE_CHECKING alike (an import inside a function closes a circle as surely as one at the top)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return {module for module in found if module in known and module != name}


def _import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = _modules(package)
    known = set(modules)
    return {name: _imports(path, name, known) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Returns the strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles_between_modules():
    assert _cycles(_import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_cycle_check_finds_a_planted_cycle_closed_inside_a_function(tmp_path):
    package = tmp_path / "planted"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "low.py").write_text("from planted.sub.high import run\n")
    (package / "sub" / "high.py").write_text("def run():\n    from planted import low\n    return low\n")
    (package / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from planted import low\n")
    assert _cycles(_import_graph(package)) == [["planted.low", "planted.sub.high"]]
    (package / "low.py").write_text("")
    assert _cycles(_import_graph(package)) == []


def test_llm_serving_layer_does_not_import_generators():
    graph = _import_graph()
    offenders = {name: sorted(targets) for name, targets in graph.items() if name.startswith("agentqat.serving")
                 for target in targets if target.startswith("agentqat.generators")}  # fmt: skip
    assert offenders == {}


def test_the_strategy_spine_imports_nothing_that_searches_or_plays_it():
    above = ("generators", "arena", "evolution", "rundir", "session", "export", "report", "study", "cli", "ui", "polish")
    graph = _import_graph()
    offenders = {name: sorted(t for t in targets if t.split(".")[1] in above) for name, targets in graph.items()
                 if name.startswith("agentqat.strategy")}  # fmt: skip
    assert {name: targets for name, targets in offenders.items() if targets} == {}


def test_modules_stay_small():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """Returns (python, agentqat script) of a fresh venv with agentqat installed from a wheel built here.

    The venv sees this environment's third-party packages through a path file, not through its site
    directory, so the editable install's finder stays out and only the wheel's agentqat is importable."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    wheel = next((root / "dist").glob("agentqat-*.whl"))
    environment = root / "venv"
    venv.EnvBuilder(with_pip=False).create(environment)
    python = environment / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    shared = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "shared-dependencies.pth").write_text("\n".join(shared) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", site, str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    script = environment / "bin" / "agentqat"
    script.write_text(f"#!{python}\nimport sys\nfrom agentqat.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)
    return python, script


def _run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_wheel_install_runs_from_outside_the_source_tree(wheel_venv, tiny_llama_dir, tmp_path):
    python, script = wheel_venv
    where = _run([python, "-c", "import agentqat; print(agentqat.__file__)"], tmp_path)
    assert where.returncode == 0, where.stderr
    assert str(ROOT) not in where.stdout, "the wheel's agentqat must be imported, not the source tree"

    strategy = tmp_path / "w4.json"
    strategy.write_text(json.dumps({"default": {"weight": {"bits": 4, "group_size": 32}}}))
    validated = _run([script, "validate", strategy, "--model", tiny_llama_dir], tmp_path)
    assert validated.returncode == 0, validated.stdout + validated.stderr

    helped = _run([script, "evolve", "--help"], tmp_path)
    assert helped.returncode == 0 and "--generator" in helped.stdout

    planned = _run([script, "plan", "--arena", "smollm2-study", "--model", tiny_llama_dir, "--json"], tmp_path)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert json.loads(planned.stdout)["arena"] == "smollm2-study"

    packaged = _run([python, "-c", (
        "from agentqat.arena.config import ARENA_DEFINITIONS, load_arena, packaged_arenas\n"
        "from agentqat.generators.llm import prompts\n"
        "context = prompts.Context('a 2-layer model', 4.5, 'none measured', (), ())\n"
        "print(prompts.render('propose', context).splitlines()[0])\n"
        "from agentqat.data import load_corpus\n"
        "arena = load_arena('smollm2-default')\n"
        "print(arena.name, len(arena.stages), packaged_arenas())\n"
        "print(sorted(p.name for p in prompts.TEMPLATES.iterdir() if p.name.endswith('.md')))\n"
        "print(len(load_corpus('lee-news').evaluation) > 1000)\n"
        "print(ARENA_DEFINITIONS, prompts.TEMPLATES)\n"
    )], tmp_path)  # fmt: skip
    assert packaged.returncode == 0, packaged.stderr
    assert "smollm2-default" in packaged.stdout and "propose.v1.md" in packaged.stdout and "True" in packaged.stdout
    arenas, templates = packaged.stdout.splitlines()[-1].split()
    assert arenas.endswith("agentqat/arena/definitions") and templates.endswith("agentqat/generators/llm/templates")
    assert str(ROOT) not in arenas + templates, "the wheel's own arenas and templates, not the checkout's arena/ and prompts/"
