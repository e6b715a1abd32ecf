"""``sensor_msgs/CameraInfo`` -> :class:`CameraModel` of the image actually published (ROI and binning applied).

REP 104: ``width``/``height``/``K``/``D`` describe the full, unbinned sensor;
``roi`` is a sub-window of it in full-resolution pixels, and ``binning_x/y``
then merge b x b pixels into one. A driver that crops or bins therefore sends
images smaller than ``width x height`` with the same K; the model must be
cropped and binned the same way, or every depth pixel lands on the wrong ray.
One implementation for the offline reader and the node, so both agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fsmde_core.camera import CameraModel
from fsmde_core.messages.errors import ConversionError, frame_of


def camera_info_to_model(msg: Any, use_projection: bool = False) -> CameraModel:
    """``sensor_msgs/CameraInfo`` (rclpy or rosbags) -> :class:`CameraModel` (ConversionError if unusable).

    ``use_projection=False`` (raw images): intrinsics from ``k`` and ``d``.
    ``use_projection=True`` (``image_rect`` topics): intrinsics from ``p[:, :3]``,
    no distortion. ROI and binning are then applied (:func:`apply_roi_and_binning`).
    """
    where = f"CameraInfo (frame {frame_of(msg)})"
    w, h = int(msg.width), int(msg.height)
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if w <= 0 or h <= 0:
        raise ConversionError(f"{where}: image size is {w}x{h}; the camera is not calibrated")
    if not np.any(K):
        raise ConversionError(f"{where}: K is all zeros; the camera is not calibrated")
    D = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    model_name = str(msg.distortion_model).strip()
    if use_projection:
        P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
        if not np.any(P):
            raise ConversionError(f"{where}: P is all zeros; cannot use the rectified projection")
        K, D, model_name = P[:, :3].copy(), np.zeros(5), "plumb_bob"
    elif model_name in ("plumb_bob", "") and D.size > 5 and np.any(D[5:]):
        raise ConversionError(
            f"{where}: distortion model {model_name or 'plumb_bob'!r} has {D.size} non-zero "
            "coefficients; plumb_bob takes 5 (k1, k2, p1, p2, k3)")
    try:
        model = CameraModel(w, h, K, D[:5], model_name or "plumb_bob")
    except ValueError as err:
        raise ConversionError(f"{where}: {err}") from err
    return apply_roi_and_binning(model, msg, where)


def apply_roi_and_binning(model: CameraModel, msg: Any, where: str) -> CameraModel:
    """The full-sensor ``model`` cropped to ``msg.roi`` and binned by ``msg.binning_x/y``.

    A zero-size ROI means the full image and a binning of 0 or 1 means none
    (REP 104). Binning b maps full pixel centre u to ``(u - (b - 1) / 2) / b``:
    the pixel-centre-exact resize by exactly 1/b, after dropping the
    ``size % b`` edge pixels that the camera cannot bin (they are not sent).
    """
    roi = msg.roi
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    try:
        if int(roi.width) > 0 and int(roi.height) > 0:
            model = model.cropped(int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height))
        if bx > 1 or by > 1:
            w, h = model.width // bx, model.height // by
            model = model.cropped(0, 0, w * bx, h * by).resized(w, h)
    except ValueError as err:
        raise ConversionError(f"{where}: bad roi / binning: {err}") from err
    return model
