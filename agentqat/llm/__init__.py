"""The LLM generator's serving layer: JSON-schema-constrained backends (a vLLM server through Outlines, or
Outlines over transformers in-process) and a managed vLLM server subprocess."""
