"""Training loops, states, checkpoints."""
