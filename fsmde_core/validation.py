"""Held-out validation during training: ``fsmde eval``'s metrics on ``data.val_bags``, every few steps.

Why inside training: a run that overfits, or whose KD terms hurt held-out
depth, shows it in the curve, not only after the last step. The numbers are
the ones ``fsmde eval --checkpoint RUN --gt GT --cap CAP`` reports for the
same weights (metric mode: the student predicts metres, nothing is aligned):
Eigen metrics per image (:func:`fsmde_core.evaluate.depth_metrics`), averaged
over frames per camera, then over cameras. The cross-view term of
``fsmde eval`` is left out: it needs calibration per frame and is a report
number, not a training signal. Held-out sets are decoded once into their own
cache (``cache_root/val_samples``) at the training size.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fsmde_core.config import EvalConfig
from fsmde_core.data.config import DataConfig
from fsmde_core.metrics import DEFAULT_MIN_DEPTH, METRIC_KEYS, depth_metrics

#: JSON lines file in the run directory, one line per validation.
VAL_LOG = "val.jsonl"


class HeldOutValidator:
    """Scores a student on decoded held-out sets and logs the result (JSON lines + TensorBoard)."""

    def __init__(self, bags: list[Path], data: DataConfig, settings: EvalConfig, cache_dir: Path,
                 camera_names: list[str], max_depth: float, run_dir: Path, progress: bool = False) -> None:
        from fsmde_core.data.cache import SurroundDataset, build_cache

        if settings.gt == "synthetic":  # LiDAR is not the reference then; keep every set (as fsmde eval)
            data = dataclasses.replace(data, require_lidar=False)
        self.dataset = SurroundDataset(build_cache(bags, data, cache_dir, progress=progress))
        if len(self.dataset) == 0:
            raise ValueError(f"no complete surround sets in the validation bags {', '.join(map(str, bags))}: "
                             "run 'fsmde inspect' on them")
        self.order = _camera_order(self.dataset.camera_names, camera_names, bags)
        self.settings = settings
        self.cap = float(settings.cap if settings.cap is not None else max_depth)
        self.names = list(camera_names)
        self.log_path = Path(run_dir) / VAL_LOG

    def frames(self) -> range:
        n = len(self.dataset)
        return range(min(n, self.settings.max_frames) if self.settings.max_frames else n)

    def _ground_truth(self, item: dict[str, Any]) -> np.ndarray:
        if self.settings.gt == "lidar":
            return item["sparse_depth"][self.order, 0].numpy()
        if not bool(item["has_gt"]):
            raise ValueError("eval.gt=synthetic but a validation bag has no dense ground-truth topics; "
                             "use eval.gt=lidar for real recordings")
        return item["gt_depth"][self.order, 0].numpy()

    @torch.no_grad()
    def score(self, model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
        """Metrics of ``model`` (left in the mode it was in) on the held-out sets."""
        was_training = model.training
        model.eval()
        per_frame = []
        try:
            for i in self.frames():
                item = self.dataset[i]
                images = item["images"][self.order].to(device)
                focal_width = item["K"][self.order, 0, 0].to(device) / images.shape[-1]
                depth = model(images, focal_width).depth[:, 0].float().cpu().numpy()
                valid = ~item["masks"][self.order, 0].numpy()
                per_frame.append(depth_metrics(depth, self._ground_truth(item), valid, self.cap, DEFAULT_MIN_DEPTH))
        finally:
            model.train(was_training)
        return summarise(per_frame, self.names, self.cap, self.settings.gt)

    def __call__(self, model: torch.nn.Module, device: torch.device, step: int, writer: Any = None) -> dict:
        """Score, append a line to ``val.jsonl`` and add ``val/*`` scalars to TensorBoard."""
        result = {"step": step, **self.score(model, device)}
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(result, allow_nan=False) + "\n")
        if writer is not None:
            for key, value in result["mean"].items():
                if value is not None:
                    writer.add_scalar(f"val/{key}", value, step)
        return result


def summarise(per_frame: list[dict[str, np.ndarray]], names: list[str], cap: float, gt: str) -> dict[str, Any]:
    """Per camera: mean over frames; mean: over cameras (as ``fsmde eval``); NaN -> None for JSON."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a camera without any scored pixel is NaN
        per_camera = {name: {k: float(np.nanmean([f[k][c] for f in per_frame])) for k in METRIC_KEYS}
                      for c, name in enumerate(names)}
        mean = {k: float(np.nanmean([per_camera[n][k] for n in names])) for k in METRIC_KEYS}
    return _json_safe({"frames": len(per_frame), "gt": gt, "cap": cap, "mean": mean, "per_camera": per_camera})


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _camera_order(val_names: list[str], train_names: list[str], bags: list[Path]) -> list[int]:
    """Indices that put the held-out cameras in the training order; a clear error if one is missing."""
    missing = [n for n in train_names if n not in val_names]
    if missing:
        raise ValueError(f"validation bags {', '.join(map(str, bags))} lack camera(s) {missing} the student "
                         f"is trained on (they have {val_names})")
    return [val_names.index(n) for n in train_names]
