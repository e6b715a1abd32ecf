"""A surround camera rig: named cameras, their intrinsics and extrinsics.

Extrinsics are ``T_base_cam``: the 4x4 transform taking points from a camera's
*optical* frame (REP 103: z forward, x right, y down) into the vehicle frame
(``base_link``: x forward, y left, z up). The adjacency ring used by
view-relational distillation and the cross-view metric is derived from the
optical axes' yaw in the base frame, so it never depends on the order in which
cameras are listed.

Calibration lives in YAML (``config/rig_*.yaml``): see :func:`Rig.to_dict` for
the schema. Presets ``ddad`` and ``nuscenes`` approximate those datasets'
layouts and fields of view at their common training resolutions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import yaml

from fsmde_core.camera import CameraModel
from fsmde_core.names import SURROUND_CAMERAS


class RigError(ValueError):
    """A rig calibration is missing, malformed or inconsistent."""


def _dataclass_fields_equal(a: object, b: object) -> bool:
    """Field-wise equality that compares ndarrays by value.

    The generated dataclass ``__eq__`` compares array fields with ``==`` and
    raises "truth value of an array is ambiguous" (``rig_a == rig_b``,
    ``camera in cameras``).
    """
    if type(a) is not type(b):
        return False
    for f in fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _rotation_matrix_is_valid(R: np.ndarray, tol: float = 1e-4) -> bool:
    return bool(np.allclose(R @ R.T, np.eye(3), atol=tol) and abs(np.linalg.det(R) - 1.0) < tol)


def optical_to_base_rotation(yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Rotation (optical -> base) of a camera looking along ``yaw`` (CCW from +x, REP 103).

    ``pitch`` > 0 tilts the optical axis down; ``roll`` rotates about it.
    """
    psi, theta, phi = np.radians([yaw_deg, pitch_deg, roll_deg])
    z = np.array([np.cos(theta) * np.cos(psi), np.cos(theta) * np.sin(psi), -np.sin(theta)])
    x0 = np.array([np.sin(psi), -np.cos(psi), 0.0])  # right, horizontal
    y0 = np.cross(z, x0)  # down
    c, s = np.cos(phi), np.sin(phi)
    x = c * x0 + s * y0
    y = -s * x0 + c * y0
    return np.stack([x, y, z], axis=1)


def make_transform(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def quaternions_to_matrices(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions (x, y, z, w) as in geometry_msgs, normalised here -> (..., 3, 3) rotations."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=-2)


def quaternion_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) as in geometry_msgs -> 3x3 rotation."""
    return quaternions_to_matrices(q_xyzw)


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit quaternion (x, y, z, w), numerically stable branch choice."""
    m = np.asarray(R, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = np.sqrt(tr + 1.0) * 2
        w, x, y, z = 0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        w, x, y, z = (m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s
    elif m[1, 1] > m[2, 2]:
        s = np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        w, x, y, z = (m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s
    else:
        s = np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        w, x, y, z = (m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s
    q = np.array([x, y, z, w])
    q = q if w >= 0 else -q  # q and -q are the same rotation: pick w >= 0 for stable output
    return q / np.linalg.norm(q)


@dataclass
class RigCamera:
    """One camera of the rig.

    Attributes:
        name: short name used everywhere (topics, reports), e.g. ``front``.
        frame_id: its optical frame, e.g. ``camera_front_optical_frame``.
        model: intrinsics at the calibration resolution.
        T_base_cam: 4x4 optical frame -> base frame.
        image_topic / info_topic: default topics for this camera.
        mask: optional path to an ego-mask image (non-zero = the car's own body:
            hood, mirrors); masked pixels never enter a loss, metric or output.
    """

    name: str
    frame_id: str
    model: CameraModel
    T_base_cam: np.ndarray
    image_topic: str = ""
    info_topic: str = ""
    mask: str | None = None

    def __post_init__(self) -> None:
        T = np.asarray(self.T_base_cam, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)) or not np.allclose(T[3], [0, 0, 0, 1]):
            raise RigError(f"camera {self.name!r}: T_base_cam must be a finite 4x4 homogeneous transform")
        if not _rotation_matrix_is_valid(T[:3, :3]):
            raise RigError(f"camera {self.name!r}: rotation part of T_base_cam is not a proper rotation")
        self.T_base_cam = T
        if not self.image_topic:
            self.image_topic = f"/cameras/{self.name}/image_raw"
        if not self.info_topic:
            self.info_topic = f"/cameras/{self.name}/camera_info"

    def __eq__(self, other: object) -> bool:
        return _dataclass_fields_equal(self, other) if isinstance(other, RigCamera) else NotImplemented

    @property
    def yaw_deg(self) -> float:
        """Yaw of the optical axis in the base frame, CCW from +x, in (-180, 180]."""
        z_axis = self.T_base_cam[:3, 2]
        return float(np.degrees(np.arctan2(z_axis[1], z_axis[0])))

    @property
    def T_cam_base(self) -> np.ndarray:
        return np.linalg.inv(self.T_base_cam)


@dataclass
class Rig:
    """Named cameras (+ an optional LiDAR) rigidly mounted on a vehicle."""

    name: str
    cameras: list[RigCamera]
    base_frame: str = "base_link"
    lidar_frame: str = "lidar"
    T_base_lidar: np.ndarray = field(default_factory=lambda: np.eye(4))
    lidar_topic: str = "/lidar/points"
    max_depth: float = 80.0

    def __post_init__(self) -> None:
        if not self.cameras:
            raise RigError(f"rig {self.name!r} has no cameras")
        names = [c.name for c in self.cameras]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise RigError(f"rig {self.name!r}: duplicate camera names {sorted(dup)}")
        T = np.asarray(self.T_base_lidar, dtype=np.float64)
        if (T.shape != (4, 4) or not np.all(np.isfinite(T)) or not np.allclose(T[3], [0, 0, 0, 1])
                or not _rotation_matrix_is_valid(T[:3, :3])):
            raise RigError(f"rig {self.name!r}: T_base_lidar must be a 4x4 rigid transform")
        self.T_base_lidar = T
        if not np.isfinite(self.max_depth) or self.max_depth <= 0:
            raise RigError(f"rig {self.name!r}: max_depth must be a positive number, got {self.max_depth}")

    def __eq__(self, other: object) -> bool:
        return _dataclass_fields_equal(self, other) if isinstance(other, Rig) else NotImplemented

    # -------------------------------------------------------------- queries
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def __len__(self) -> int:
        return len(self.cameras)

    def camera(self, name: str) -> RigCamera:
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(f"rig {self.name!r} has no camera {name!r} (cameras: {self.names})")

    def index(self, name: str) -> int:
        return self.names.index(name)

    def ring_order(self) -> list[int]:
        """Camera indices sorted by optical-axis yaw, counter-clockwise from the front.

        The ring starts at the camera whose axis is closest to +x (a front camera
        mounted at -0.3 deg yaw is still first, not last). Ties (same yaw) are
        broken by name, so the order never depends on how cameras are listed.
        """
        yaws = np.array([c.yaw_deg for c in self.cameras])
        names = [c.name for c in self.cameras]
        front = min(range(len(yaws)), key=lambda i: (abs(yaws[i]), names[i]))
        ccw_from_front = np.mod(yaws - yaws[front], 360.0)
        ccw_from_front[front] = 0.0
        return sorted(range(len(yaws)), key=lambda i: (float(ccw_from_front[i]), names[i]))

    def adjacent_pairs(self) -> list[tuple[int, int]]:
        """Neighbouring cameras around the ring, each pair once (i -> next CCW).

        A rig of two cameras gives one pair; one camera gives none.
        """
        order = self.ring_order()
        n = len(order)
        if n < 2:
            return []
        if n == 2:
            return [(order[0], order[1])]
        return [(order[k], order[(k + 1) % n]) for k in range(n)]

    def scaled(self, width: int, height: int) -> Rig:
        """The same rig with every camera's intrinsics resized to ``width x height``."""
        cams = [
            RigCamera(c.name, c.frame_id, c.model.scaled_to(width, height), c.T_base_cam.copy(),
                      c.image_topic, c.info_topic, c.mask)
            for c in self.cameras
        ]
        return Rig(self.name, cams, self.base_frame, self.lidar_frame, self.T_base_lidar.copy(),
                   self.lidar_topic, self.max_depth)

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict:
        """The YAML schema: every field explicit, transforms as translation + quaternion."""

        def tf(T: np.ndarray) -> dict:
            return {
                "translation": [round(float(v), 9) for v in T[:3, 3]],
                "rotation_xyzw": [round(float(v), 12) for v in matrix_to_quaternion(T[:3, :3])],
            }

        return {
            "rig": self.name,
            "base_frame": self.base_frame,
            "max_depth": float(self.max_depth),
            "lidar": {
                "frame_id": self.lidar_frame,
                "topic": self.lidar_topic,
                "T_base_lidar": tf(self.T_base_lidar),
            },
            "cameras": [
                {
                    "name": c.name,
                    "frame_id": c.frame_id,
                    "image_topic": c.image_topic,
                    "info_topic": c.info_topic,
                    "width": c.model.width,
                    "height": c.model.height,
                    "K": [float(v) for v in c.model.K.reshape(-1)],
                    "D": [float(v) for v in c.model.D],
                    "distortion_model": c.model.distortion_model or "plumb_bob",
                    "T_base_cam": tf(c.T_base_cam),
                    **({"mask": c.mask} if c.mask else {}),
                }
                for c in self.cameras
            ],
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> Rig:
        """Parse and validate; every error names the source and the field."""
        if not isinstance(data, dict):
            raise RigError(f"{source}: expected a mapping at the top level")
        cams_raw = _need(data, "cameras", "the top level", source)
        if not isinstance(cams_raw, list) or not cams_raw:
            raise RigError(f"{source}: 'cameras' must be a non-empty list")
        cameras = [_parse_camera(c, i, source) for i, c in enumerate(cams_raw)]
        names = [c.name for c in cameras]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise RigError(f"{source}: cameras: duplicate camera names {dup}")
        lidar = data.get("lidar") or {}
        if not isinstance(lidar, dict):
            raise RigError(f"{source}: 'lidar' must be a mapping")
        T_bl = (_parse_tf(lidar["T_base_lidar"], "lidar.T_base_lidar", source)
                if "T_base_lidar" in lidar else np.eye(4))
        try:
            max_depth = float(data.get("max_depth", 80.0))
        except (TypeError, ValueError) as exc:
            raise RigError(f"{source}: max_depth must be a number, got {data.get('max_depth')!r}") from exc
        try:
            return cls(
                name=str(data.get("rig", Path(source).stem)),
                cameras=cameras,
                base_frame=str(data.get("base_frame", "base_link")),
                lidar_frame=str(lidar.get("frame_id", "lidar")),
                T_base_lidar=T_bl,
                lidar_topic=str(lidar.get("topic", "/lidar/points")),
                max_depth=max_depth,
            )
        except RigError as exc:
            raise RigError(f"{source}: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path) -> Rig:
        path = Path(path)
        if not path.is_file():
            raise RigError(f"rig calibration file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise RigError(f"{path}: expected a mapping at the top level")
        rig = cls.from_dict(data, source=str(path))
        # Ego masks are given relative to the calibration file.
        for cam in rig.cameras:
            if cam.mask and not Path(cam.mask).is_absolute():
                cam.mask = str((path.parent / cam.mask).resolve())
        return rig

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(yaml.dump(self.to_dict(), Dumper=_CalibrationDumper, sort_keys=False))
        tmp.replace(path)


# ------------------------------------------------------------- YAML parsing
class _CalibrationDumper(yaml.SafeDumper):
    """Safe dumper writing short numeric lists inline (``K: [fx, 0, cx, ...]``) so a
    calibration file stays readable and editable by hand."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(v, int | float) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_CalibrationDumper.add_representer(list, _represent_list)


def _need(d: object, key: str, where: str, source: str):
    if not isinstance(d, dict):
        raise RigError(f"{source}: {where} must be a mapping, got {type(d).__name__}")
    if key not in d:
        raise RigError(f"{source}: missing '{key}' in {where}")
    return d[key]


def _parse_tf(d: object, where: str, source: str) -> np.ndarray:
    """``{translation: [x, y, z], rotation_xyzw: [x, y, z, w]}`` -> 4x4, validated."""
    try:
        t = np.asarray(_need(d, "translation", where, source), dtype=np.float64)
        q = np.asarray(_need(d, "rotation_xyzw", where, source), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RigError(f"{source}: {where}: translation/rotation_xyzw must be numbers ({exc})") from exc
    if t.shape != (3,) or q.shape != (4,) or not np.all(np.isfinite(t)) or not np.all(np.isfinite(q)):
        raise RigError(f"{source}: {where} needs translation [x,y,z] and rotation_xyzw [x,y,z,w]")
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > 1e-3:
        raise RigError(f"{source}: {where}.rotation_xyzw is not a unit quaternion (norm {norm:.4f})")
    return make_transform(quaternion_to_matrix(q), t)


def _parse_camera(c: object, i: int, source: str) -> RigCamera:
    """One ``cameras[i]`` entry -> RigCamera; every error names the source and the camera."""
    if not isinstance(c, dict):
        raise RigError(f"{source}: cameras[{i}] must be a mapping, got {type(c).__name__}")
    name = str(_need(c, "name", f"cameras[{i}]", source))
    where = f"camera {name!r}"
    try:
        model = CameraModel.from_camera_info_fields(
            _need(c, "width", where, source), _need(c, "height", where, source),
            _need(c, "K", where, source), c.get("D"), c.get("distortion_model", "plumb_bob"),
        )
        mask = c.get("mask")
        if mask is not None and not isinstance(mask, str):
            raise ValueError(f"mask must be a path string, got {mask!r}")
        return RigCamera(
            name=name,
            frame_id=str(c.get("frame_id", f"camera_{name}_optical_frame")),
            model=model,
            T_base_cam=_parse_tf(_need(c, "T_base_cam", where, source), f"{where}.T_base_cam", source),
            image_topic=str(c.get("image_topic", "")),
            info_topic=str(c.get("info_topic", "")),
            mask=mask or None,
        )
    except RigError as exc:
        # RigCamera's own checks do not know the file: prefix it once.
        if str(exc).startswith(source):
            raise
        raise RigError(f"{source}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise RigError(f"{source}: {where}: {exc}") from exc


# ---------------------------------------------------------------- presets
# (yaw deg, hfov deg, position in base_link [m]) per camera of SURROUND_CAMERAS, in
# that order — approximations of the published layouts, at the resolutions
# surround-depth papers train at.
_PRESETS: dict[str, dict] = {
    "ddad": {
        "size": (640, 384),
        "max_depth": 200.0,
        "pitch": 2.0,
        "cameras": [
            (0.0, 80.0, (1.80, 0.00, 1.55)),
            (60.0, 90.0, (1.40, 0.55, 1.50)),
            (125.0, 90.0, (-0.60, 0.55, 1.50)),
            (180.0, 80.0, (-1.20, 0.00, 1.55)),
            (-125.0, 90.0, (-0.60, -0.55, 1.50)),
            (-60.0, 90.0, (1.40, -0.55, 1.50)),
        ],
        "lidar": (0.0, 0.0, 1.95),
    },
    "nuscenes": {
        "size": (640, 352),
        "max_depth": 80.0,
        "pitch": 0.5,
        "cameras": [
            (0.0, 70.0, (1.70, 0.00, 1.51)),
            (55.0, 70.0, (1.52, 0.49, 1.51)),
            (110.0, 70.0, (1.03, 0.48, 1.56)),
            (180.0, 110.0, (0.03, 0.00, 1.57)),
            (-110.0, 70.0, (1.04, -0.48, 1.56)),
            (-55.0, 70.0, (1.55, -0.49, 1.52)),
        ],
        "lidar": (0.94, 0.0, 1.84),
    },
}

PRESET_NAMES = tuple(_PRESETS)


def preset(name: str, width: int | None = None, height: int | None = None) -> Rig:
    """A six-camera preset rig (``ddad`` or ``nuscenes``), optionally at another size."""
    if name not in _PRESETS:
        raise RigError(f"unknown rig preset {name!r} (choose from {', '.join(PRESET_NAMES)})")
    if (width is None) != (height is None):
        raise RigError(f"preset {name!r}: give both width and height or neither (got {width}x{height})")
    p = _PRESETS[name]
    w0, h0 = p["size"]
    cams = []
    for cam_name, (yaw, hfov, pos) in zip(SURROUND_CAMERAS, p["cameras"], strict=True):
        model = CameraModel.pinhole(w0, h0, hfov)
        T = make_transform(optical_to_base_rotation(yaw, p["pitch"]), np.asarray(pos))
        cams.append(RigCamera(cam_name, f"camera_{cam_name}_optical_frame", model, T))
    rig = Rig(name, cams, T_base_lidar=make_transform(np.eye(3), np.asarray(p["lidar"])),
              max_depth=p["max_depth"])
    if width is not None and height is not None:
        rig = rig.scaled(width, height)
    return rig
