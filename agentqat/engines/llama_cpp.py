"""llama.cpp's own tools, pinned: `llama-quantize`, `llama-imatrix`, `llama-perplexity` and `convert_hf_to_gguf.py`.

The pinned llama.cpp is the source tree that the `llama-cpp-python` sdist of version LLAMA_CPP_PYTHON vendors
(`vendor/llama.cpp`): it is on the package index, so air-gapped boxes with a PyPI mirror get it too. The first
command that needs a tool downloads that sdist with pip, builds the three tools with cmake (about 8 minutes on 2
cores, the phase "building llama.cpp"; one patch of ours, LOG_FLUSH_PATCH, makes the measuring tools print their
last lines) and keeps them under `<cache>/engines/llama.cpp-<version>/`; a file lock
keeps two processes from building at once, and a finished build is never redone. `AGENTQAT_ENGINES_DIR` moves
`<cache>/engines`; `AGENTQAT_LLAMA_CPP_BIN` names a directory of tools built elsewhere (the source tree is still
needed for `convert_hf_to_gguf.py`).

Everything here runs a tool and reads what it wrote or printed; no quantizer or metric is re-implemented.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from agentqat.defaults import cache_dir
from agentqat.errors import UserError
from agentqat.progress import Reporter, phase

LLAMA_CPP_PYTHON = "0.3.36"  # the sdist whose vendor/llama.cpp is the pinned llama.cpp
TOOLS = ("llama-quantize", "llama-imatrix", "llama-perplexity")
BIN_ENV = "AGENTQAT_LLAMA_CPP_BIN"
ENGINES_ENV = "AGENTQAT_ENGINES_DIR"
BUILD_HINT = "run `agentqat engines --build` (downloads the llama-cpp-python sdist from the package index, ~8 min on 2 cores)"
# llama.cpp's logger runs on a thread that is never flushed at exit (its common_log is leaked on purpose, llama.cpp
# issue 22142), so a tool can exit before its last lines are written: under load, llama-perplexity's closing KL
# statistics were lost 4 times in a row. The build adds one call that drains the log thread before main returns.
LOG_FLUSH_PATCH = "common_log_pause(common_log_main());  // agentqat: drain the log thread before exit (llama.cpp issue 22142)"
PATCHED_TOOLS = ("tools/perplexity/perplexity.cpp", "tools/imatrix/imatrix.cpp")
PATCH_MARKER = "agentqat-patch-1"  # in build/: the tools were built from the patched source
CMAKE_OPTIONS = ("-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DCMAKE_BUILD_TYPE=Release")


@dataclass(frozen=True)
class LlamaCpp:
    """A built llama.cpp: its tools' directory, its source tree (for the converter) and its pinned version."""

    bin_dir: Path
    source: Path
    version: str

    def tool(self, name: str) -> Path:
        """Returns the path of tool `name` (one of TOOLS)."""
        return self.bin_dir / name


def engines_root() -> Path:
    """Returns where engines are built and their files kept: $AGENTQAT_ENGINES_DIR, else <cache>/engines."""
    return Path(os.environ.get(ENGINES_ENV) or cache_dir() / "engines")


def engine_directory() -> Path:
    """Returns where the pinned llama.cpp is unpacked (src/) and built (build/bin/)."""
    return engines_root() / f"llama.cpp-{LLAMA_CPP_PYTHON}"


def _bin_dir() -> Path:
    return Path(os.environ[BIN_ENV]) if os.environ.get(BIN_ENV) else engine_directory() / "build" / "bin"


def _complete(bin_dir: Path, source: Path) -> bool:
    built = all((bin_dir / tool).is_file() for tool in TOOLS) and (source / "convert_hf_to_gguf.py").is_file()
    return built and (os.environ.get(BIN_ENV) is not None or (bin_dir.parent / PATCH_MARKER).is_file())


def patch_log_flush(source: Path) -> None:
    """Makes llama-perplexity and llama-imatrix drain their log thread before they return (see LOG_FLUSH_PATCH);
    does nothing to a file patched already. ValueError when a file's end of main is not where llama.cpp has it."""
    ending = "    llama_backend_free();\n\n    return 0;\n}"
    for name in PATCHED_TOOLS:
        path = source / name
        text = path.read_text()
        if LOG_FLUSH_PATCH in text:
            continue
        if text.count(ending) != 1:
            raise ValueError(f"{path}: main's ending is not llama.cpp's; the log-flush patch does not apply")
        path.write_text(text.replace(ending, f"    llama_backend_free();\n\n    {LOG_FLUSH_PATCH}\n    return 0;\n}}"))


def find_llama_cpp() -> LlamaCpp | None:
    """Returns the built llama.cpp, or None when its tools or source are not there."""
    source = engine_directory() / "src"
    bin_dir = _bin_dir()
    return LlamaCpp(bin_dir, source, LLAMA_CPP_PYTHON) if _complete(bin_dir, source) else None


def require_llama_cpp() -> LlamaCpp:
    """Returns the built llama.cpp; UserError saying how to get it when it is missing."""
    found = find_llama_cpp()
    if found is None:
        raise UserError(f"llama.cpp {LLAMA_CPP_PYTHON} is not built on this machine", BUILD_HINT)
    return found


def _run(command: list[str], log: Path | None = None) -> str:
    """Returns the combined output of `command` (also written to `log`); UserError with its last lines when it
    fails. The output goes to a file, not a pipe: llama.cpp's log thread can drop its last lines into a pipe at exit."""
    with tempfile.TemporaryFile() as captured:
        result = subprocess.run(command, stdout=captured, stderr=subprocess.STDOUT)
        captured.seek(0)
        output = captured.read().decode("utf-8", errors="replace")
    if log is not None:
        log.write_text(output)
    if result.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-6:])
        raise UserError(f"{Path(command[0]).name} failed (exit {result.returncode}): {tail}", "see the output above")
    return output


def _unpack_source(target: Path) -> None:
    """Downloads the pinned sdist with pip and unpacks its vendor/llama.cpp into `target`."""
    with tempfile.TemporaryDirectory() as download:
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        _run([*pip, "-d", download, f"llama-cpp-python=={LLAMA_CPP_PYTHON}"])
        archive = next(Path(download).glob("llama_cpp_python-*.tar.gz"))
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for member in members:
                member.name = member.name[len(prefix) :]
            tar.extractall(staging, members=[m for m in members if m.name], filter="data")
        staging.replace(target)


def build_llama_cpp(reporter: Reporter | None = None, jobs: int = 2) -> LlamaCpp:
    """Returns the pinned llama.cpp, downloading and building it first when absent (phase "building llama.cpp")."""
    directory = engine_directory()
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / "build.lock")):
        if (found := find_llama_cpp()) is not None:
            return found
        if not shutil.which("cmake"):
            raise UserError("building llama.cpp needs cmake and a C++ compiler", "apt-get install cmake g++ (or pip install cmake)")
        source, build = directory / "src", directory / "build"
        with phase(reporter, "building llama.cpp", total=3, detail=f"llama-cpp-python {LLAMA_CPP_PYTHON}'s vendored tree, once") as step:
            if not (source / "CMakeLists.txt").is_file():
                _unpack_source(source)
            patch_log_flush(source)
            step()
            _run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_OPTIONS], log=directory / "cmake.log")
            step()
            _run(["cmake", "--build", str(build), "--target", *TOOLS, f"-j{jobs}"], log=directory / "build.log")
            (build / PATCH_MARKER).touch()
            step()
    return require_llama_cpp()


# ----------------------------------------------------------------------------------------- the tools
def convert_to_gguf(engine: LlamaCpp, hf_directory: Path, target: Path, outtype: str = "f32") -> Path:
    """Returns `target`, the Hugging Face model directory written as a GGUF file by llama.cpp's own converter."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".tmp")
    converter = engine.source / "convert_hf_to_gguf.py"
    _run([sys.executable, str(converter), str(hf_directory), "--outfile", str(staging), "--outtype", outtype])
    staging.replace(target)
    return target


def importance_matrix(engine: LlamaCpp, model: Path, text: Path, target: Path, chunks: int, context: int) -> Path:
    """Returns `target`, llama-imatrix's importance matrix of `model` over `chunks` chunks of `context` tokens of
    `text` (the tool adds the model's BOS token to each chunk as the model expects)."""
    staging = target.with_name(target.stem + ".tmp" + target.suffix)
    command = [str(engine.tool("llama-imatrix")), "-m", str(model), "-f", str(text), "-c", str(context),
               "--chunks", str(chunks), "-o", str(staging), "-t", str(os.cpu_count() or 2)]  # fmt: skip
    _run(command, log=target.with_suffix(".log"))
    staging.replace(target)
    return target


def quantize(
    engine: LlamaCpp, source: Path, target: Path, type_name: str, imatrix: Path | None = None,
    tensor_types: dict[str, str] | None = None, pure: bool = False, embedding_type: str | None = None,
) -> Path:  # fmt: skip
    """Returns `target`, llama-quantize's `type_name` file of `source`: its stock recipe, or every tensor at that
    type (`pure`), with per-tensor overrides (`--tensor-type`, exact names), the token embedding and output head at
    `embedding_type`, and an importance matrix."""
    staging = target.with_name(target.stem + ".tmp" + target.suffix)
    command = quantize_command(str(engine.tool("llama-quantize")), str(source), str(staging), type_name,
                               str(imatrix) if imatrix else None, tensor_types, pure, embedding_type)  # fmt: skip
    _run([*command, str(os.cpu_count() or 2)], log=target.with_suffix(".log"))
    staging.replace(target)
    return target


def quantize_command(
    tool: str, source: str, target: str, type_name: str, imatrix: str | None = None,
    tensor_types: dict[str, str] | None = None, pure: bool = False, embedding_type: str | None = None,
) -> list[str]:  # fmt: skip
    """Returns the llama-quantize command line (without its thread count) that writes `target` from `source`.
    A `--tensor-type` pattern is a regular expression llama.cpp searches in each name: anchored, it names one."""
    command = [tool]
    if imatrix is not None:
        command += ["--imatrix", imatrix]
    if pure:
        command.append("--pure")
    if embedding_type is not None:
        command += ["--token-embedding-type", embedding_type, "--output-tensor-type", embedding_type]
    for name, override in (tensor_types or {}).items():
        command += ["--tensor-type", f"^{re.escape(name)}$={override}"]
    return [*command, source, target, type_name]


@dataclass(frozen=True)
class KlFigures:
    """What llama-perplexity --kl-divergence prints: mean KL to the base, same-top-token rate, perplexity and
    the base's, over `chunks` chunks of `context` tokens (the second half of each scored)."""

    mean_kl: float
    same_top: float
    perplexity: float
    base_perplexity: float
    chunks: int
    context: int


def base_logits(engine: LlamaCpp, base: Path, text: Path, target: Path, chunks: int, context: int) -> Path:
    """Returns `target`, the base model's logits over the text's chunks (llama-perplexity --kl-divergence-base)."""
    staging = target.with_name(target.name + ".tmp")
    command = [str(engine.tool("llama-perplexity")), "-m", str(base), "-f", str(text), "-c", str(context),
               "--chunks", str(chunks), "--kl-divergence-base", str(staging), "-t", str(os.cpu_count() or 2)]  # fmt: skip
    _run(command, log=target.with_suffix(".log"))
    staging.replace(target)
    return target


_FIGURE = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"


def _figure(output: str, label: str) -> float:
    match = re.search(rf"^{label}\s*:\s*({_FIGURE})", output, flags=re.MULTILINE)
    if match is None:
        tail = " | ".join(output.strip().splitlines()[-4:])[-600:]
        raise UserError(f"llama-perplexity printed no '{label}' line; it ended with: {tail}", "check the tool's output")
    return float(match.group(1))


def parse_kl_output(output: str, chunks: int, context: int) -> KlFigures:
    """Returns the figures of llama-perplexity --kl-divergence's closing statistics."""
    return KlFigures(
        mean_kl=_figure(output, r"Mean\s+KLD"),
        same_top=_figure(output, r"Same top p") / 100,
        perplexity=_figure(output, r"Mean PPL\(Q\)"),
        base_perplexity=_figure(output, r"Mean PPL\(base\)"),
        chunks=chunks,
        context=context,
    )


def kl_divergence(engine: LlamaCpp, model: Path, base_logits_file: Path, chunks: int, context: int) -> KlFigures:
    """Returns `model`'s KL figures against the base logits in `base_logits_file` (llama-perplexity, whose own
    chunks the file holds)."""
    command = [str(engine.tool("llama-perplexity")), "-m", str(model), "--kl-divergence-base", str(base_logits_file),
               "--kl-divergence", "-c", str(context), "--chunks", str(chunks), "-t", str(os.cpu_count() or 2)]  # fmt: skip
    return parse_kl_output(_run(command), chunks, context)


def perplexity(engine: LlamaCpp, model: Path, text: Path, chunks: int, context: int) -> float:
    """Returns llama-perplexity's final estimate on `text`: chunks of `context` tokens, each opening with BOS where
    the model asks for it, the second half of each scored."""
    command = [str(engine.tool("llama-perplexity")), "-m", str(model), "-f", str(text), "-c", str(context),
               "--chunks", str(chunks), "-t", str(os.cpu_count() or 2)]  # fmt: skip
    match = re.search(rf"Final estimate: PPL = ({_FIGURE})", _run(command))
    if match is None:
        raise UserError("llama-perplexity printed no final estimate", "check the tool's output")
    return float(match.group(1))
