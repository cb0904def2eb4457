"""Training: the loop (loop.py), losses, checkpoints, distributed setup and the training log."""
