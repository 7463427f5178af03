"""The evolution loop (loop.py): propose, evaluate, tell, survive; stopping rules. No I/O."""
