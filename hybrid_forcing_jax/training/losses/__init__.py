"""Training losses: pure functions of (params, batch, rng), one per file, each citing its equation."""
