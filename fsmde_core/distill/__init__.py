"""Distillation losses, one module per job: supervised, ckd, vrkd, ablations, objective (the sum the trainer calls)."""
