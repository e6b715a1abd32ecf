"""Pinhole + plumb_bob camera model built from ``sensor_msgs/CameraInfo`` fields.

Conventions (REP 103 optical frame): z forward, x right, y down; pixel (u, v)
has u along x and v along y, pixel centres at integer coordinates (the ROS /
OpenCV convention). Depth is the distance along the optical Z axis (REP 118),
so a pixel ray is stored with unit Z: ``point = depth * ray``.

Distortion follows ROS ``plumb_bob`` (OpenCV's 5-parameter radial-tangential
model: k1, k2, p1, p2, k3). ``rational_polynomial`` and ``equidistant`` are
refused with a clear error rather than silently treated as pinhole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SUPPORTED_DISTORTION = ("plumb_bob", "none", "")


def _as_intrinsic_matrix(K: np.ndarray) -> np.ndarray:
    """Validate a pinhole K (fx, fy > 0, optional skew, last row [0, 0, 1]) -> float64 (3, 3)."""
    try:
        K_arr = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid intrinsic matrix K: not numeric ({exc})") from exc
    if K_arr.size != 9:
        raise ValueError(f"invalid intrinsic matrix K: need 3x3 (9 values), got shape {K_arr.shape}")
    K_arr = K_arr.reshape(3, 3)
    if (
        not np.all(np.isfinite(K_arr)) or K_arr[0, 0] <= 0 or K_arr[1, 1] <= 0
        or K_arr[1, 0] != 0 or K_arr[2, 0] != 0 or K_arr[2, 1] != 0 or K_arr[2, 2] != 1.0
    ):
        raise ValueError(
            f"invalid intrinsic matrix K={K_arr.tolist()} "
            "(need finite values, fx, fy > 0 and rows [fx s cx; 0 fy cy; 0 0 1])"
        )
    return K_arr


def _as_plumb_bob_coefficients(D: np.ndarray | None) -> np.ndarray:
    """CameraInfo ``d`` (empty, 4 or 5 values) -> float64 (5,) k1, k2, p1, p2, k3."""
    try:
        D_arr = np.zeros(0) if D is None else np.asarray(D, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid distortion coefficients D: not numeric ({exc})") from exc
    if D_arr.size > 5 and np.any(D_arr[5:] != 0):
        # rational_polynomial's k4..k6 would be silently dropped: refuse instead.
        raise ValueError(f"plumb_bob takes at most 5 distortion coefficients, got {D_arr.tolist()}")
    D_arr = np.concatenate([D_arr[:5], np.zeros(max(0, 5 - D_arr.size))])  # k3 is often omitted
    if not np.all(np.isfinite(D_arr)):
        raise ValueError(f"invalid distortion coefficients D={D_arr.tolist()} (must be finite)")
    return D_arr


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics of one camera at one image size.

    Attributes:
        width, height: image size in pixels.
        K: (3, 3) intrinsic matrix (fx, fy, cx, cy; skew ``K[0, 1]`` honoured, usually 0).
        D: (5,) plumb_bob coefficients (k1, k2, p1, p2, k3); zeros = pinhole.
        distortion_model: ``"plumb_bob"`` (also accepted: ``"none"``/empty = pinhole).
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray | None = field(default_factory=lambda: np.zeros(5))
    distortion_model: str = "plumb_bob"

    def __post_init__(self) -> None:
        K = _as_intrinsic_matrix(self.K)
        D = _as_plumb_bob_coefficients(self.D)
        if self.distortion_model not in SUPPORTED_DISTORTION:
            raise ValueError(
                f"distortion model {self.distortion_model!r} is not supported "
                f"(supported: plumb_bob or none); rectify the images first"
            )
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "D", D)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    def __eq__(self, other: object) -> bool:
        # The generated dataclass __eq__ compares ndarrays with ``==`` and raises
        # "truth value of an array is ambiguous"; compare values exactly instead.
        if not isinstance(other, CameraModel):
            return NotImplemented
        return (
            (self.width, self.height, self.distortion_model)
            == (other.width, other.height, other.distortion_model)
            and np.array_equal(self.K, other.K)
            and np.array_equal(self.D, other.D)
        )

    def __hash__(self) -> int:
        return hash((self.width, self.height, self.distortion_model, self.K.tobytes(), self.D.tobytes()))

    # ------------------------------------------------------------------ basics
    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def skew(self) -> float:
        return float(self.K[0, 1])

    @property
    def is_distorted(self) -> bool:
        return bool(np.any(self.D != 0.0))

    @property
    def hfov_deg(self) -> float:
        """Horizontal field of view of the pinhole part, in degrees."""
        return float(np.degrees(2 * np.arctan2(self.width / 2.0, self.fx)))

    @classmethod
    def pinhole(cls, width: int, height: int, hfov_deg: float) -> CameraModel:
        """Square-pixel pinhole camera with the principal point at the centre."""
        f = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2.0)
        K = np.array([[f, 0, (width - 1) / 2.0], [0, f, (height - 1) / 2.0], [0, 0, 1.0]])
        return cls(width, height, K)

    @classmethod
    def from_camera_info_fields(
        cls, width: int, height: int, k: list[float] | np.ndarray, d: list[float] | np.ndarray | None,
        distortion_model: str = "plumb_bob",
    ) -> CameraModel:
        """Build from the fields of ``sensor_msgs/CameraInfo`` (row-major 9-element ``k``)."""
        k_arr = np.asarray(k, dtype=np.float64)
        if k_arr.size != 9:
            raise ValueError(f"CameraInfo.k must have 9 elements, got {k_arr.size}")
        return cls(int(width), int(height), k_arr.reshape(3, 3), None if d is None else np.asarray(d),
                   distortion_model or "plumb_bob")

    def to_camera_info_fields(self) -> dict:
        """Fields for ``sensor_msgs/CameraInfo``: k, d, r (identity), p (K | 0), size, model."""
        P = np.zeros((3, 4))
        P[:, :3] = self.K
        return {
            "width": self.width,
            "height": self.height,
            "distortion_model": "plumb_bob",
            "k": self.K.reshape(-1).tolist(),
            "d": self.D.tolist(),
            "r": np.eye(3).reshape(-1).tolist(),
            "p": P.reshape(-1).tolist(),
        }

    # --------------------------------------------------------- resize and crop
    def resized(self, width: int, height: int) -> CameraModel:
        """Intrinsics for the image resized to ``width x height``.

        Uses the pixel-centre-exact mapping ``u' = (u + 0.5) * s - 0.5`` so a
        3D point projects onto the same image content before and after the
        resize (``image_proc``'s ``cx * s`` is off by ``(s - 1) / 2`` pixels).
        Distortion coefficients act on normalised coordinates and are unchanged.
        """
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"resize target must be positive, got {width}x{height}")
        sx, sy = width / self.width, height / self.height
        A = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        return CameraModel(width, height, A @ self.K, self.D, self.distortion_model)

    def cropped(self, x0: int, y0: int, width: int, height: int) -> CameraModel:
        """Intrinsics of the sub-image starting at pixel (x0, y0)."""
        if x0 < 0 or y0 < 0 or x0 + width > self.width or y0 + height > self.height:
            raise ValueError(
                f"crop ({x0},{y0},{width}x{height}) outside image {self.width}x{self.height}"
            )
        K = self.K.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        return CameraModel(width, height, K, self.D, self.distortion_model)

    # ------------------------------------------------------------- distortion
    def max_valid_radius2(self) -> float:
        """Largest squared normalised radius where plumb_bob's radial map still increases.

        Beyond it the polynomial folds back (barrel lenses, k1 < 0): points far
        outside the field of view would otherwise project *into* the image and
        pixels near the border would have two candidate rays. ``inf`` if it never
        folds (tangential terms are small and ignored here).
        """
        k1, k2, _, _, k3 = self.D
        # d/dr [r (1 + k1 r^2 + k2 r^4 + k3 r^6)] = 1 + 3 k1 s + 5 k2 s^2 + 7 k3 s^3, s = r^2
        coeffs = np.trim_zeros(np.array([7 * k3, 5 * k2, 3 * k1, 1.0]), "f")
        roots = np.roots(coeffs) if coeffs.size > 1 else np.array([])
        real = roots[(np.abs(roots.imag) < 1e-12) & (roots.real > 0)].real
        return float(real.min()) if real.size else float("inf")

    def distort_normalised(self, xn: np.ndarray, yn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply plumb_bob to normalised image coordinates (x/z, y/z)."""
        if not self.is_distorted:
            return xn, yn
        k1, k2, p1, p2, k3 = self.D
        r2 = xn * xn + yn * yn
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = xn * radial + 2 * p1 * xn * yn + p2 * (r2 + 2 * xn * xn)
        yd = yn * radial + p1 * (r2 + 2 * yn * yn) + 2 * p2 * xn * yn
        return xd, yd

    def undistort_normalised(
        self, xd: np.ndarray, yd: np.ndarray, iterations: int = 20, tol: float = 1e-10
    ) -> tuple[np.ndarray, np.ndarray]:
        """Invert plumb_bob with vectorised Newton steps (2x2 analytic Jacobian).

        OpenCV's fixed-point iteration stalls or diverges towards the corners of
        wide (~100 deg) automotive lenses; Newton from ``(xd, yd)`` converges
        monotonically inside the valid radius. Coordinates with no valid inverse
        (beyond :meth:`max_valid_radius2`, or not converged to ``tol``) are NaN,
        so callers drop them instead of using a wrong ray.
        """
        xd = np.asarray(xd, dtype=np.float64)
        yd = np.asarray(yd, dtype=np.float64)
        if not self.is_distorted:
            return xd, yd
        xd, yd = np.broadcast_arrays(xd, yd)
        x, y = xd.astype(np.float64).reshape(-1), yd.astype(np.float64).reshape(-1)
        tx, ty = x.copy(), y.copy()
        active = np.arange(x.size)  # only elements still moving are iterated
        with np.errstate(all="ignore"):
            for _ in range(iterations):
                if active.size == 0:
                    break
                sx, sy = self._newton_step(x[active], y[active], tx[active], ty[active])
                x[active] -= sx
                y[active] -= sy
                active = active[np.abs(sx) + np.abs(sy) > tol]  # NaN steps drop out too
            rx, ry = self.distort_normalised(x, y)
            bad = ~(np.hypot(rx - tx, ry - ty) <= 1e3 * tol) | ~(x * x + y * y < self.max_valid_radius2())
        x = np.where(bad, np.nan, x).reshape(xd.shape)
        y = np.where(bad, np.nan, y).reshape(xd.shape)
        return x, y

    def _newton_step(
        self, x: np.ndarray, y: np.ndarray, xd: np.ndarray, yd: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One Newton step J^-1 (distort(x, y) - (xd, yd)) for plumb_bob (J symmetric)."""
        k1, k2, p1, p2, k3 = self.D
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dradial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d r2
        ex = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        ey = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        j11 = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x
        j22 = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x
        j12 = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y
        det = j11 * j22 - j12 * j12
        return (j22 * ex - j12 * ey) / det, (j11 * ey - j12 * ex) / det

    # ------------------------------------------------ projection / rays
    def project(self, points_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project (N, 3) optical-frame points to pixels.

        Returns:
            uv: (N, 2) float pixel coordinates; NaN for points with z <= 0 and,
                for distorted cameras, for points beyond the radius where the
                distortion polynomial folds back (see :meth:`max_valid_radius2`).
            z: (N,) depth along the optical axis.
        """
        pts = np.asarray(points_cam, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise ValueError(f"project expects (N, 3) points, got shape {pts.shape}")
        z = pts[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            safe_z = np.where(z > 1e-9, z, np.nan)
            xn, yn = pts[:, 0] / safe_z, pts[:, 1] / safe_z
            if self.is_distorted:
                folded = ~(xn * xn + yn * yn < self.max_valid_radius2())
                xn, yn = np.where(folded, np.nan, xn), np.where(folded, np.nan, yn)
        xd, yd = self.distort_normalised(xn, yn)
        uv = np.stack([self.fx * xd + self.skew * yd + self.cx, self.fy * yd + self.cy], axis=1)
        return uv, z

    def pixel_rays(self, stride: int = 1) -> np.ndarray:
        """(H, W, 3) float32 rays with unit Z, undistorted: ``point = depth * ray``.

        Pixels with no valid inverse under the distortion model have NaN x, y.
        ``stride`` > 1 gives the rays of every stride-th pixel only (equal to
        ``pixel_rays()[::stride, ::stride]``) at 1/stride^2 of the cost: the
        iterative undistortion is the expensive part.
        """
        u = np.arange(0, self.width, stride, dtype=np.float64)
        v = np.arange(0, self.height, stride, dtype=np.float64)
        uu, vv = np.meshgrid(u, v)
        yd = (vv - self.cy) / self.fy
        xd = (uu - self.cx - self.skew * yd) / self.fx
        xn, yn = self.undistort_normalised(xd, yd)
        return np.stack([xn, yn, np.ones_like(xn)], axis=-1).astype(np.float32)

    def scaled_to(self, width: int, height: int) -> CameraModel:
        """Alias of :meth:`resized` that is a no-op when the size already matches."""
        if width == self.width and height == self.height:
            return self
        return self.resized(width, height)
