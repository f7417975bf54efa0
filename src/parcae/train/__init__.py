"""Training: config, optimizer, schedule, checkpoints, metrics and the training loop."""
