"""Self-supervised surround depth: learning metric depth from the video itself, without LiDAR.

A frame is reconstructed from its neighbours in time (same camera, t-1 / t+1)
and in space (the adjacent cameras of the rig), warped through the predicted
depth and known poses (odometry, extrinsics, or a pose network); the
photometric error of the reconstruction is the training signal, and the
calibrated extrinsics and metric odometry give it metric scale. Reflective
surfaces break the photometric assumption, so an intrinsic decomposition
(diffuse + view-dependent residual) finds and masks them.

Modules (imported by name; this package re-exports nothing so that importing
one piece never pulls in the others):

* ``warp`` — relative camera poses and depth-based image warping;
* ``photometric`` — SSIM + L1, per-pixel minimum reprojection, auto-masking, source building;
* ``posenet`` — the rig pose network (one ego motion per surround set);
* ``intrinsic`` / ``reflective`` — the decomposition network, its losses and the reflective mask.
"""
