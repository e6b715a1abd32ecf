"""Tests of the message layer (fsmde_core.messages, through fsmde_ros.conversions): every encoding,
padding, byte order, errors, clouds, stamps, ROI/binning intrinsics, the image size guard, and that
rosbags-deserialised messages (offline) decode exactly like rclpy ones (online).

Messages are built here independently of the code under test (byte layouts
written out by hand / with numpy structured arrays), and most round trips go
through rclpy's real CDR serializer so the produced messages are known valid.
"""

from __future__ import annotations

import array
import io
import struct
import sys
import zlib

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="rclpy (ros-kilted-rclpy wheels) is not installed")
from builtin_interfaces.msg import Time
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField
from std_msgs.msg import Header

from fsmde_core.camera import CameraModel
from fsmde_core.messages import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageTooLargeError,
    MalformedMessageError,
    UnsupportedEncodingError,
    cloud_xyz,
    declared_size,
    message_to_rgb,
)
from fsmde_ros.conversions import (
    COLOR_ENCODINGS,
    ConversionError,
    camera_info_to_model,
    cloud_to_points,
    compressed_to_rgb,
    depth_to_image,
    image_to_depth,
    image_to_rgb,
    model_to_camera_info,
    ns_to_stamp,
    points_to_cloud,
    stamp_to_ns,
)

RNG = np.random.default_rng(7)
HEADER = Header(stamp=Time(sec=1_700_000_000, nanosec=123_456_789), frame_id="cam_front_optical")


def _roundtrip(msg: object) -> object:
    """Through rclpy's CDR serializer: what a subscriber in another process gets."""
    return deserialize_message(serialize_message(msg), type(msg))


def _channels_for(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """Pixel bytes of ``encoding`` written out by hand from an RGB image (alpha = noise)."""
    alpha = RNG.integers(0, 256, (*rgb.shape[:2], 1), dtype=np.uint8)
    return {
        "rgb8": rgb,
        "bgr8": rgb[..., ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[..., ::-1], alpha], axis=2),
        "mono8": rgb[..., :1],
        "8uc1": rgb[..., :1],
    }[encoding]


def _image_msg(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """Image with ``pad`` garbage bytes at the end of every row."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1).view(np.uint8) if pixels.dtype != np.uint8 else pixels.reshape(h, -1)
    padding = np.full((h, pad), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, padding], axis=1)
    return Image(header=HEADER, height=h, width=w, encoding=encoding, is_bigendian=bigendian,
                 step=data.shape[1], data=data.tobytes())


# ------------------------------------------------------------------ colour
@pytest.mark.parametrize("encoding", list(COLOR_ENCODINGS))
@pytest.mark.parametrize("pad", [0, 5])
def test_color_encodings_round_trip(encoding: str, pad: int) -> None:
    rgb = RNG.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    if COLOR_ENCODINGS[encoding].rgb_index is None:
        rgb[...] = rgb[..., :1]  # grey image: the expected output replicates one channel
    msg = _roundtrip(_image_msg(_channels_for(rgb, encoding), encoding, pad))
    out = image_to_rgb(msg)
    assert out.shape == (7, 9, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


def test_unpadded_rgb8_is_a_read_only_zero_copy_view() -> None:
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    msg = _roundtrip(_image_msg(rgb, "rgb8"))
    assert isinstance(msg.data, array.array)  # what rclpy hands back for uint8[]
    view = image_to_rgb(msg)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8)) and not view.flags.writeable
    owned = image_to_rgb(msg, copy=True)
    assert owned.flags.writeable and not np.shares_memory(owned, np.frombuffer(msg.data, np.uint8))
    np.testing.assert_array_equal(view, owned)


@given(h=st.integers(1, 12), w=st.integers(1, 12), pad=st.integers(0, 9),
       encoding=st.sampled_from(sorted(COLOR_ENCODINGS)), seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_color_any_size_and_padding(h: int, w: int, pad: int, encoding: str, seed: int) -> None:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    if COLOR_ENCODINGS[encoding].rgb_index is None:
        rgb[...] = rgb[..., :1]
    np.testing.assert_array_equal(image_to_rgb(_image_msg(_channels_for(rgb, encoding), encoding, pad)), rgb)


@pytest.mark.parametrize("encoding", ["16UC1", "bayer_rggb8", "yuv422", "rgb16", "8UC3", ""])
def test_unsupported_color_encoding_names_encoding_and_frame(encoding: str) -> None:
    msg = Image(header=HEADER, height=2, width=2, encoding=encoding, step=12, data=bytes(24))
    with pytest.raises(ConversionError) as exc:
        image_to_rgb(msg)
    assert repr(encoding) in str(exc.value) and "cam_front_optical" in str(exc.value)


@pytest.mark.parametrize(
    ("step", "nbytes", "match"),
    [(15, 44, "data has 44 bytes"), (15, 46, "data has 46 bytes"), (14, 42, "step 14 < width 5")],
)
def test_size_mismatch_errors(step: int, nbytes: int, match: str) -> None:
    msg = Image(header=HEADER, height=3, width=5, encoding="rgb8", step=step, data=bytes(nbytes))
    with pytest.raises(ConversionError, match=match):
        image_to_rgb(msg)


def test_empty_image_is_an_error() -> None:
    with pytest.raises(ConversionError, match="empty"):
        image_to_rgb(Image(header=HEADER, height=0, width=4, encoding="rgb8", step=12))


# -------------------------------------------------------------- compressed
def _encode(rgb: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    img = PILImage.fromarray(rgb if mode == "RGB" else rgb[..., 0])
    img.save(buf, format=fmt, quality=95) if fmt == "JPEG" else img.save(buf, format=fmt)
    return buf.getvalue()


def test_compressed_png_is_lossless_and_jpeg_close() -> None:
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    png = _roundtrip(CompressedImage(header=HEADER, format="png", data=_encode(rgb, "PNG")))
    np.testing.assert_array_equal(compressed_to_rgb(png), rgb)
    smooth = np.repeat(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], 24, axis=0).repeat(3, axis=2)
    jpg = CompressedImage(header=HEADER, format="rgb8; jpeg compressed bgr8", data=_encode(smooth, "JPEG"))
    out = compressed_to_rgb(jpg)
    assert out.shape == smooth.shape and np.abs(out.astype(int) - smooth).mean() < 3


def test_compressed_grey_png_is_replicated() -> None:
    grey = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    grey[...] = grey[..., :1]
    msg = CompressedImage(header=HEADER, format="mono8; png compressed", data=_encode(grey, "PNG", "L"))
    np.testing.assert_array_equal(compressed_to_rgb(msg), grey)


@pytest.mark.parametrize("payload", [b"not an image at all", "truncated-jpeg", b""])
def test_corrupt_compressed_data(payload: bytes | str) -> None:
    if payload == "truncated-jpeg":
        payload = _encode(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")[:300]
    msg = CompressedImage(header=HEADER, format="jpeg", data=payload)
    with pytest.raises(ConversionError) as exc:
        compressed_to_rgb(msg)
    assert "'jpeg'" in str(exc.value) and "cam_front_optical" in str(exc.value)


def test_compressed_depth_is_refused() -> None:
    msg = CompressedImage(header=HEADER, format="16UC1; compressedDepth png", data=bytes(20))
    with pytest.raises(ConversionError, match="compressedDepth"):
        compressed_to_rgb(msg)


# ------------------------------------------------------------------- depth
def test_depth_round_trip_preserves_rep117_values() -> None:
    depth = RNG.uniform(0.5, 80, (6, 10)).astype(np.float32)
    depth[0, 0], depth[1, 1], depth[2, 2] = np.nan, np.inf, -np.inf  # invalid, too far, too close
    msg = depth_to_image(depth, HEADER)
    assert (msg.encoding, msg.step, msg.width, msg.height) == ("32FC1", 40, 10, 6)
    assert bool(msg.is_bigendian) == (sys.byteorder == "big")
    back = image_to_depth(_roundtrip(msg))
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, depth)  # NaN == NaN positions, +-Inf kept


def test_depth_header_is_copied_and_float64_accepted() -> None:
    header = Header(stamp=Time(sec=5, nanosec=6), frame_id="cam_left_optical")
    msg = depth_to_image(np.full((2, 3), 4.25), header)
    header.frame_id, header.stamp.sec = "changed", 99
    assert msg.header.frame_id == "cam_left_optical" and msg.header.stamp.sec == 5
    np.testing.assert_array_equal(image_to_depth(msg), np.full((2, 3), 4.25, np.float32))


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 1), np.float32), np.zeros((2, 3), np.uint16),
                                 np.zeros((0, 3), np.float32)])
def test_depth_to_image_rejects_bad_arrays(bad: np.ndarray) -> None:
    with pytest.raises(ConversionError):
        depth_to_image(bad, HEADER)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 3])
def test_depth_byte_order_and_padding(bigendian: bool, pad: int) -> None:
    depth = RNG.uniform(0, 50, (4, 5)).astype(np.float32)
    depth[1, 2] = np.nan
    stored = depth.astype(">f4" if bigendian else "<f4")
    back = image_to_depth(_image_msg(stored, "32FC1", pad, bigendian))
    np.testing.assert_array_equal(back, depth)
    millimetres = np.array([[0, 1, 1500], [65535, 250, 0]], dtype=np.uint16)
    mm_msg = _image_msg(millimetres.astype(">u2" if bigendian else "<u2"), "16UC1", pad, bigendian)
    expected = np.array([[np.nan, 0.001, 1.5], [65.535, 0.25, np.nan]], dtype=np.float32)
    np.testing.assert_allclose(image_to_depth(mm_msg), expected, rtol=1e-6)


def test_depth_64fc1_and_view_semantics() -> None:
    depth = RNG.uniform(0, 10, (3, 4))
    np.testing.assert_allclose(image_to_depth(_image_msg(depth.astype("<f8"), "64FC1")), depth, rtol=1e-6)
    msg = depth_to_image(depth.astype(np.float32), HEADER)
    view = image_to_depth(msg)
    assert not view.flags.writeable and np.shares_memory(view, np.frombuffer(msg.data, np.uint8))
    assert image_to_depth(msg, copy=True).flags.writeable


@pytest.mark.parametrize("encoding", ["rgb8", "mono16", "8UC1"])
def test_unsupported_depth_encoding(encoding: str) -> None:
    with pytest.raises(ConversionError, match=repr(encoding)):
        image_to_depth(Image(header=HEADER, height=1, width=1, encoding=encoding, step=4, data=bytes(4)))


# ------------------------------------------------------------- camera info
def _model() -> CameraModel:
    K = np.array([[500.0, 0, 319.5], [0, 505.0, 191.5], [0, 0, 1]])
    return CameraModel(640, 384, K, np.array([-0.1, 0.02, 0.001, -0.002, 0.003]))


def test_camera_info_round_trip() -> None:
    model = _model()
    msg = _roundtrip(model_to_camera_info(model, HEADER))
    assert (msg.width, msg.height, msg.distortion_model) == (640, 384, "plumb_bob")
    assert msg.header.frame_id == "cam_front_optical"
    np.testing.assert_array_equal(np.reshape(msg.r, (3, 3)), np.eye(3))
    np.testing.assert_array_equal(np.reshape(msg.p, (3, 4))[:, :3], model.K)
    back = camera_info_to_model(msg)
    np.testing.assert_array_equal(back.K, model.K)
    np.testing.assert_array_equal(back.D, model.D)
    assert (back.width, back.height) == (640, 384)


def test_uncalibrated_camera_info_is_refused() -> None:
    with pytest.raises(ConversionError, match=r"K is all zeros.*") as exc:
        camera_info_to_model(CameraInfo(header=HEADER, width=640, height=384))
    assert "cam_front_optical" in str(exc.value)
    with pytest.raises(ConversionError, match="0x0"):
        camera_info_to_model(CameraInfo(header=HEADER))


def test_unsupported_distortion_is_refused() -> None:
    msg = model_to_camera_info(_model(), HEADER)
    msg.distortion_model = "rational_polynomial"
    msg.d = array.array("d", [0.1] * 8)
    with pytest.raises(ConversionError, match="rational_polynomial"):
        camera_info_to_model(msg)
    msg.distortion_model = "plumb_bob"  # 8 coefficients under the wrong name: not silently truncated
    with pytest.raises(ConversionError, match="8 non-zero"):
        camera_info_to_model(msg)


def test_camera_info_binning_roi_and_projection() -> None:
    model = _model()
    msg = model_to_camera_info(model, HEADER)
    msg.binning_x = msg.binning_y = 2
    binned = camera_info_to_model(msg)
    np.testing.assert_allclose(binned.K, model.resized(320, 192).K)
    msg.binning_x = msg.binning_y = 0
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 10, 20, 300, 200
    np.testing.assert_allclose(camera_info_to_model(msg).K, model.cropped(10, 20, 300, 200).K)
    msg.roi.width = msg.roi.height = 0
    P = np.zeros((3, 4))
    P[:, :3] = [[480.0, 0, 320.0], [0, 480.0, 190.0], [0, 0, 1]]
    msg.p = P.reshape(-1)
    rect = camera_info_to_model(msg, use_projection=True)
    np.testing.assert_array_equal(rect.K, P[:, :3])
    assert not rect.is_distorted


# ------------------------------------------------------------ point clouds
def test_cloud_round_trip_with_rgb() -> None:
    xyz = RNG.normal(0, 20, (1000, 3)).astype(np.float32)
    rgb = RNG.integers(0, 256, (1000, 3), dtype=np.uint8)
    msg = points_to_cloud(xyz, rgb, HEADER)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 1000, 16, 16000)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1),
        ("z", 8, PointField.FLOAT32, 1), ("rgb", 12, PointField.FLOAT32, 1)]
    assert msg.is_dense
    # the ROS packing, checked on raw bytes: uint32 0x00RRGGBB in the rgb slot
    packed = np.frombuffer(msg.data, np.uint32).reshape(-1, 4)[:, 3]
    expected = (rgb[:, 0].astype(np.uint32) << 16) | (rgb[:, 1].astype(np.uint32) << 8) | rgb[:, 2]
    np.testing.assert_array_equal(packed, expected)
    xyz2, rgb2 = cloud_to_points(_roundtrip(msg))
    np.testing.assert_array_equal(xyz2, xyz)
    np.testing.assert_array_equal(rgb2, rgb)


def test_cloud_without_rgb_and_is_dense() -> None:
    xyz = RNG.normal(0, 5, (50, 3)).astype(np.float32)
    msg = points_to_cloud(xyz, None, HEADER)
    assert [f.name for f in msg.fields] == ["x", "y", "z"] and msg.point_step == 16 and msg.is_dense
    back, colours = cloud_to_points(msg)
    assert colours is None
    np.testing.assert_array_equal(back, xyz)
    xyz[3, 1] = np.nan
    assert not points_to_cloud(xyz, None, HEADER).is_dense
    np.testing.assert_array_equal(cloud_to_points(points_to_cloud(xyz, None, HEADER))[0], xyz)
    empty = points_to_cloud(np.zeros((0, 3), np.float32), None, HEADER)
    assert empty.width == 0 and cloud_to_points(empty)[0].shape == (0, 3)


def test_points_to_cloud_rejects_bad_shapes() -> None:
    with pytest.raises(ConversionError):
        points_to_cloud(np.zeros((5, 2), np.float32), None, HEADER)
    with pytest.raises(ConversionError, match="rgb"):
        points_to_cloud(np.zeros((5, 3), np.float32), np.zeros((4, 3), np.uint8), HEADER)


def _cloud_from_structured(points: np.ndarray, fields: list[tuple[str, int, int]], height: int = 1,
                           row_pad: int = 0, bigendian: bool = False) -> PointCloud2:
    step = points.dtype.itemsize
    width = points.size // height
    rows = points.reshape(height, width).view(np.uint8).reshape(height, width * step)
    data = np.concatenate([rows, np.full((height, row_pad), 0xCD, np.uint8)], axis=1)
    return PointCloud2(
        header=HEADER, height=height, width=width, is_bigendian=bigendian, point_step=step,
        row_step=width * step + row_pad, is_dense=False, data=data.tobytes(),
        fields=[PointField(name=n, offset=o, datatype=d, count=1) for n, o, d in fields])


def test_lidar_like_cloud_with_extra_fields() -> None:
    """Ouster/Velodyne-style layout: padding after z, intensity, ring, time; point_step 32."""
    dt = np.dtype({"names": ["x", "y", "z", "intensity", "ring", "t"],
                   "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f8"],
                   "offsets": [0, 4, 8, 16, 20, 24], "itemsize": 32})
    pts = np.zeros(300, dtype=dt)
    xyz = RNG.normal(0, 30, (300, 3)).astype(np.float32)
    pts["x"], pts["y"], pts["z"] = xyz.T
    pts["intensity"], pts["ring"] = RNG.uniform(0, 1, 300), np.arange(300) % 64
    pts["t"] = np.arange(300) * 1e-5
    fields = [("intensity", 16, PointField.FLOAT32), ("ring", 20, PointField.UINT16),
              ("t", 24, PointField.FLOAT64), ("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32),
              ("z", 8, PointField.FLOAT32)]  # field order in the message need not match offsets
    got, colours = cloud_to_points(_roundtrip(_cloud_from_structured(pts, fields)))
    assert colours is None
    np.testing.assert_array_equal(got, xyz)


@pytest.mark.parametrize("bigendian", [False, True])
def test_organised_float64_cloud_with_row_padding(bigendian: bool) -> None:
    order = ">" if bigendian else "<"
    dt = np.dtype({"names": ["z", "x", "y", "rgba"], "formats": [order + "f8"] * 3 + [order + "u4"],
                   "offsets": [0, 8, 16, 28], "itemsize": 32})
    pts = np.zeros(2 * 5, dtype=dt)
    xyz = RNG.normal(0, 3, (10, 3))
    pts["x"], pts["y"], pts["z"] = xyz.T
    rgb = RNG.integers(0, 256, (10, 3), dtype=np.uint8)
    c = rgb.astype(np.uint32)
    pts["rgba"] = (0xFF << 24) | (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]  # alpha set: bits, not floats
    fields = [("z", 0, PointField.FLOAT64), ("x", 8, PointField.FLOAT64), ("y", 16, PointField.FLOAT64),
              ("rgba", 28, PointField.UINT32)]
    msg = _cloud_from_structured(pts, fields, height=2, row_pad=7, bigendian=bigendian)
    got, colours = cloud_to_points(msg)
    np.testing.assert_allclose(got, xyz.astype(np.float32))
    np.testing.assert_array_equal(colours, rgb)


def test_cloud_errors() -> None:
    good = points_to_cloud(RNG.normal(size=(10, 3)).astype(np.float32), None, HEADER)
    no_z = _roundtrip(good)
    no_z.fields = [f for f in no_z.fields if f.name != "z"]
    with pytest.raises(ConversionError, match="x/y/z"):
        cloud_to_points(no_z)
    int_x = _roundtrip(good)
    int_x.fields[0].datatype = PointField.INT16
    with pytest.raises(ConversionError, match="FLOAT32"):
        cloud_to_points(int_x)
    short = _roundtrip(good)
    short.data = bytes(100)
    with pytest.raises(ConversionError, match="100 bytes"):
        cloud_to_points(short)
    narrow = _roundtrip(good)
    narrow.row_step = 8
    with pytest.raises(ConversionError, match="row_step"):
        cloud_to_points(narrow)
    overrun = _roundtrip(good)
    overrun.fields[2].offset = 14
    with pytest.raises(ConversionError, match="overruns"):
        cloud_to_points(overrun)


# ------------------------------------------------------------------ stamps
@pytest.mark.parametrize("ns", [0, 1, 999_999_999, 1_700_000_000_123_456_789, -1, -1_500_000_000])
def test_stamp_round_trip(ns: int) -> None:
    stamp = ns_to_stamp(ns)
    assert 0 <= stamp.nanosec < 1_000_000_000
    assert stamp_to_ns(stamp) == ns
    assert stamp_to_ns(_roundtrip(Header(stamp=stamp)).stamp) == ns


def test_stamp_out_of_range() -> None:
    with pytest.raises(ConversionError):
        ns_to_stamp(2**31 * 1_000_000_000)


# -------------------------------------------------- reference implementations
def test_cross_check_cv_bridge() -> None:
    cv_bridge = pytest.importorskip("cv_bridge", reason="cv_bridge is not installable here (no ROS apt repo)")
    bridge = cv_bridge.CvBridge()
    rgb = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    msg = _image_msg(_channels_for(rgb, "bgr8"), "bgr8", pad=4)
    np.testing.assert_array_equal(image_to_rgb(msg), bridge.imgmsg_to_cv2(msg, "rgb8"))
    depth = RNG.uniform(0, 9, (5, 6)).astype(np.float32)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(depth_to_image(depth, HEADER), "32FC1"), depth)


def test_cross_check_sensor_msgs_py() -> None:
    pc2 = pytest.importorskip("sensor_msgs_py.point_cloud2",
                              reason="sensor_msgs_py is not installable here (no ROS apt repo)")
    xyz = RNG.normal(0, 4, (40, 3)).astype(np.float32)
    rgb = RNG.integers(0, 256, (40, 3), dtype=np.uint8)
    ours = points_to_cloud(xyz, rgb, HEADER)
    theirs = pc2.read_points_numpy(ours, field_names=("x", "y", "z"))
    np.testing.assert_array_equal(theirs, xyz)
    ref = pc2.create_cloud_xyz32(HEADER, xyz.tolist())
    np.testing.assert_array_equal(cloud_to_points(ref)[0], xyz)


# ------------------------------------------------- ROI and binning (REP 104)
def _project(model: CameraModel, pts: np.ndarray) -> np.ndarray:
    uv, _ = model.project(pts)
    return uv


@pytest.mark.parametrize(("roi", "binning"), [
    ((0, 0, 0, 0), (2, 2)),          # binning only, sizes divisible
    ((0, 0, 0, 0), (3, 2)),          # 640 / 3 leaves one column the camera cannot bin
    ((10, 20, 300, 200), (1, 1)),    # ROI only
    ((33, 17, 301, 203), (2, 3)),    # ROI, then binning with remainders in both directions
    ((0, 0, 640, 384), (0, 0)),      # full-size ROI and binning 0 = the plain image
])
def test_roi_and_binning_map_every_pixel_centre_like_the_sensor(roi: tuple, binning: tuple) -> None:
    """A 3D point seen at full-sensor pixel u must be at ``(u - x0 - (b - 1) / 2) / b`` in the image
    a cropping / binning driver sends (pixel centres at integers): checked by projecting the same
    points through the full model and the model built from the CameraInfo, distortion included."""
    full = _model()
    msg = model_to_camera_info(full, HEADER)
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = roi
    msg.binning_x, msg.binning_y = binning
    got = camera_info_to_model(_roundtrip(msg))
    x0, y0, rw, rh = roi
    bx, by = max(binning[0], 1), max(binning[1], 1)
    rw, rh = (rw or full.width), (rh or full.height)
    assert (got.width, got.height) == (rw // bx, rh // by)
    pts = np.stack([RNG.uniform(-3, 3, 50), RNG.uniform(-2, 2, 50), RNG.uniform(4, 30, 50)], axis=1)
    uv_full = _project(full, pts)
    want = np.stack([(uv_full[:, 0] - x0 - (bx - 1) / 2) / bx, (uv_full[:, 1] - y0 - (by - 1) / 2) / by], axis=1)
    np.testing.assert_allclose(_project(got, pts), want, atol=1e-9)
    np.testing.assert_array_equal(got.D, full.D)


def test_roi_outside_the_sensor_is_refused_with_the_frame() -> None:
    msg = model_to_camera_info(_model(), HEADER)
    msg.roi.x_offset, msg.roi.width, msg.roi.height = 400, 300, 200
    with pytest.raises(ConversionError, match=r"bad roi / binning.*outside") as exc:
        camera_info_to_model(msg)
    assert "cam_front_optical" in str(exc.value)


# ------------------------------------------- rosbags (offline) == rclpy (online)
def _as_rosbags(msg: object) -> object:
    """The message as the offline reader gets it: rclpy's CDR bytes deserialised by rosbags."""
    from rosbags.typesys import Stores, get_typestore

    typename = type(msg).__module__.split(".")[0] + "/msg/" + type(msg).__name__
    return get_typestore(Stores.ROS2_KILTED).deserialize_cdr(serialize_message(msg), typename)


def test_offline_and_online_messages_decode_identically() -> None:
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    info = model_to_camera_info(_model(), HEADER)
    info.binning_x = info.binning_y = 2
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 8, 4, 600, 360
    depth = RNG.uniform(1, 9, (5, 7)).astype(np.float32)
    cloud = points_to_cloud(RNG.normal(size=(20, 3)).astype(np.float32), RNG.integers(0, 256, (20, 3), np.uint8),
                            HEADER)
    for encoding in COLOR_ENCODINGS:
        raw = _image_msg(_channels_for(rgb, encoding), encoding, pad=3)
        np.testing.assert_array_equal(image_to_rgb(_as_rosbags(raw)), image_to_rgb(raw))
    png = CompressedImage(header=HEADER, format="png", data=_encode(rgb, "PNG"))
    np.testing.assert_array_equal(message_to_rgb(_as_rosbags(png)), rgb)
    assert camera_info_to_model(_as_rosbags(info)) == camera_info_to_model(info)
    np.testing.assert_array_equal(image_to_depth(_as_rosbags(depth_to_image(depth, HEADER))), depth)
    for a, b in zip(cloud_to_points(_as_rosbags(cloud)), cloud_to_points(cloud), strict=True):
        np.testing.assert_array_equal(a, b)
    assert stamp_to_ns(_as_rosbags(HEADER).stamp) == stamp_to_ns(HEADER.stamp)


def test_error_kinds_tell_topic_problems_from_message_problems() -> None:
    """Offline, an unsupported encoding stops with the topic named, a malformed message is skipped:
    both readers must raise the kind that gets that reaction (and both are ConversionError)."""
    with pytest.raises(UnsupportedEncodingError):
        image_to_rgb(Image(header=HEADER, height=2, width=2, encoding="bayer_rggb8", step=2, data=bytes(4)))
    with pytest.raises(UnsupportedEncodingError, match="h264"):
        compressed_to_rgb(CompressedImage(header=HEADER, format="h264", data=bytes(8)))
    with pytest.raises(MalformedMessageError):
        image_to_rgb(Image(header=HEADER, height=2, width=2, encoding="rgb8", step=6, data=bytes(11)))
    no_z = _roundtrip(points_to_cloud(RNG.normal(size=(4, 3)), None, HEADER))
    no_z.fields = [f for f in no_z.fields if f.name != "z"]
    with pytest.raises(UnsupportedEncodingError, match="no z field"):
        cloud_xyz(no_z)
    assert issubclass(UnsupportedEncodingError, ConversionError) and issubclass(ImageTooLargeError, ConversionError)


def test_float64_cloud_keeps_float64_precision_offline() -> None:
    """UTM-scale coordinates: float64 clouds read as float64 keep millimetres that float32 loses."""
    xyz = np.array([[500_000.001, 4_000_000.002, 10.003]])
    dtype = np.dtype([("x", "<f8"), ("y", "<f8"), ("z", "<f8")])
    fields = [PointField(name=n, offset=8 * i, datatype=PointField.FLOAT64, count=1) for i, n in enumerate("xyz")]
    msg = PointCloud2(header=HEADER, height=1, width=1, fields=fields, is_bigendian=False, point_step=24,
                      row_step=24, data=np.array([tuple(xyz[0])], dtype=dtype).tobytes(), is_dense=True)
    np.testing.assert_array_equal(cloud_xyz(msg, np.float64), xyz)


# ------------------------------------------------------------ image size guard
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` (valid signature, IHDR with CRC, IEND) but holds no pixels:
    what an oversized camera frame looks like to any reader of its header, at 57 bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int, progressive: bool = False) -> bytes:
    """A real 16x8 JPEG whose start-of-frame is patched to declare ``width x height``."""
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(RNG.integers(0, 256, (8, 16, 3), dtype=np.uint8)).save(
        buf, format="JPEG", progressive=progressive)
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_declared_size_reads_png_and_jpeg_headers_without_decoding() -> None:
    assert declared_size(_png_header_only(16000, 12000)) == (16000, 12000)
    assert declared_size(_jpeg_declaring(16, 8)) == (16, 8)
    assert declared_size(_jpeg_declaring(9000, 7000, progressive=True)) == (9000, 7000)
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    assert declared_size(_encode(rgb, "PNG")) == (32, 24)
    assert declared_size(b"not an image") is None and declared_size(b"\xff\xd8\xff") is None


@pytest.mark.parametrize("limit", [DEFAULT_MAX_IMAGE_PIXELS, None])
def test_oversized_png_is_a_conversion_error_naming_size_and_limit(limit: int | None) -> None:
    """16000x12000 made PIL raise DecompressionBombError, which is no ConversionError and escaped the
    node's per-camera handling. With a limit it is refused from the header; without one (None) PIL's
    own bomb check still ends as an ImageTooLargeError."""
    msg = CompressedImage(header=HEADER, format="png", data=_png_header_only(16000, 12000))
    with pytest.raises(ImageTooLargeError) as exc:
        compressed_to_rgb(msg, max_pixels=limit)
    text = str(exc.value)
    assert "cam_front_optical" in text and "'png'" in text
    if limit is not None:
        assert "16000x12000" in text and str(limit) in text and "max_image_pixels" in text


def test_size_guard_on_jpeg_raw_and_headerless_formats() -> None:
    jpeg = CompressedImage(header=HEADER, format="jpeg", data=_jpeg_declaring(9000, 9000))
    with pytest.raises(ImageTooLargeError, match="9000x9000"):
        compressed_to_rgb(jpeg)
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    bmp = CompressedImage(header=HEADER, format="", data=_encode(rgb, "BMP"))  # no header we parse: PIL's size
    np.testing.assert_array_equal(compressed_to_rgb(bmp), rgb)
    with pytest.raises(ImageTooLargeError, match="32x24"):
        compressed_to_rgb(bmp, max_pixels=32 * 24 - 1)
    raw = _image_msg(rgb, "rgb8")
    np.testing.assert_array_equal(image_to_rgb(raw, max_pixels=32 * 24), rgb)  # the limit is inclusive
    with pytest.raises(ImageTooLargeError, match="32x24"):
        image_to_rgb(raw, max_pixels=32 * 24 - 1)
    # a raw header larger than its data is malformed, whatever the limit
    with pytest.raises(MalformedMessageError, match="data has"):
        image_to_rgb(Image(header=HEADER, height=4000, width=4000, encoding="rgb8", step=12000, data=bytes(12)))
