"""Depth networks: the distilled student and the foundation-model teachers."""
