"""Training: the trainer that drives any method through its protocol (`train`), the optimizers,
schedules and clipping (`optim`), and checksummed checkpoints (`checkpoint`)."""
