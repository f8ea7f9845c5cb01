"""The training loop (`mlanet train`): config, checkpoints, resume, logging, DDP."""
