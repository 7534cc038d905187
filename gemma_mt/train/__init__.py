"""The trainer: config, sharded steps, checkpoints and the loop (``python -m gemma_mt.train``)."""
