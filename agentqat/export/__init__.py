"""Exports of a strategy's quantized model; importing this package registers every exporter (one module each)."""

from agentqat.export import compressed_tensors, fake_quant  # noqa: F401  (registration)
from agentqat.export.base import (
    EXPORTERS,
    ExportError,
    ExportModule,
    ExportSource,
    export,
    prepare_source,
    register_exporter,
)

__all__ = ["EXPORTERS", "ExportError", "ExportModule", "ExportSource", "export", "prepare_source", "register_exporter"]
