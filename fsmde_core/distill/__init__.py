"""Distillation losses: SILog, bin-centre Chamfer, cross-interaction KD, view-relational KD."""
