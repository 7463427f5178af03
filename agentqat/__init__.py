"""agentqat: discover LLM quantization strategies in a survival tournament."""
