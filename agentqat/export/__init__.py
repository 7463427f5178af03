"""Exporters of a strategy's quantized model, registered by format name (`agentqat.export.base.EXPORTERS`)."""

from agentqat.export import gguf  # noqa: F401  (registration)
