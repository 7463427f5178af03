"""The LLM generator and what it alone uses: prompt templates and their rendering, edit and recombination
documents, reflection. The server and the JSON backends it talks through live in `agentqat.serving`."""

from agentqat.generators.llm.generator import LlmGenerator  # noqa: F401  (registration)
