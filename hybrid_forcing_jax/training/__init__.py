"""Training: ODE-init regression now, DMD distillation next (see docs/training.md)."""
