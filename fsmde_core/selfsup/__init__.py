"""Self-supervised surround depth: photometric warps and losses, the rig pose net, intrinsic decomposition."""
