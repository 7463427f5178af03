"""Serving an LLM: JSON-schema-constrained backends (a vLLM server through Outlines, or Outlines over transformers
in-process) and a managed vLLM server subprocess. Used by the LLM generator and by measuring exports."""
