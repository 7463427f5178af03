"""Exports of a strategy's quantized model; importing this package registers every exporter (one module each)."""

from agentqat.export import compressed_tensors, fake_quant, gguf  # noqa: F401  (registration)
from agentqat.export.base import (
    EXPORTERS,
    ExportError,
    ExportModule,
    ExportSource,
    check_destination,
    export,
    prepare_source,
    register_exporter,
)
from agentqat.export.select import best_of_run, polished_of

__all__ = [
    "EXPORTERS", "ExportError", "ExportModule", "ExportSource", "best_of_run", "check_destination", "export", "polished_of", "prepare_source",
    "register_exporter",
]  # fmt: skip
