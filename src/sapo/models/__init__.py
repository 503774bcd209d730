"""Models: load Hugging Face causal LMs, memory-lean token log-probs, the tiny offline model factory."""
