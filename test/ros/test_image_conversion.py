"""sensor_msgs/Image and CompressedImage -> RGB, on real sensor_msgs messages.

Expected arrays are written out by hand (or built independently of the code under test), for
every encoding, with row padding, and for 16-bit data in both byte orders.
"""
from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import CompressedImage, Image

from aura_ros.ros.image_conversion import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    compressed_to_rgb,
    depth_to_gray,
    image_to_rgb,
    rgb_to_compressed_msg,
    rgb_to_image_msg,
)

PAD = 0xEE  # padding bytes: a conversion that reads them shows this value in the output


def raw(encoding: str, height: int, width: int, rows: list[bytes], step: int, bigendian: bool = False) -> Image:
    """An Image whose rows are given as bytes, each padded with PAD up to ``step``."""
    msg = Image(height=height, width=width, encoding=encoding, is_bigendian=int(bigendian), step=step)
    msg.data = b"".join(r + bytes([PAD]) * (step - len(r)) for r in rows)
    return msg


def rgb_frame(h: int = 3, w: int = 4) -> np.ndarray:
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3) * 7 + 1


# ------------------------------------------------------------------ 8-bit encodings


@pytest.mark.parametrize("encoding,channel_order", [
    ("rgb8", [0, 1, 2]), ("bgr8", [2, 1, 0]), ("8UC3", [0, 1, 2]),
    ("rgba8", [0, 1, 2, None]), ("bgra8", [2, 1, 0, None]), ("8UC4", [0, 1, 2, None]),
])
def test_colour_encodings_with_row_padding(encoding, channel_order):
    expected = rgb_frame()
    h, w = expected.shape[:2]
    # Write each pixel's channels in the encoding's order (alpha: 0x42, which must not appear).
    pixels = np.stack([expected[:, :, c] if c is not None else np.full((h, w), 0x42, np.uint8)
                       for c in channel_order], axis=2)
    step = w * len(channel_order) + 5
    msg = raw(encoding, h, w, [pixels[r].tobytes() for r in range(h)], step)
    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (h, w, 3)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_with_row_padding(encoding):
    gray = np.array([[0, 10, 200], [255, 1, 128]], dtype=np.uint8)
    out = image_to_rgb(raw(encoding, 2, 3, [gray[0].tobytes(), gray[1].tobytes()], step=8))
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))


def test_result_is_an_owned_copy():
    msg = raw("rgb8", 3, 4, [r.tobytes() for r in rgb_frame()], step=12)
    out = image_to_rgb(msg)
    out[:] = 0
    np.testing.assert_array_equal(image_to_rgb(msg), rgb_frame())


def test_every_supported_encoding_is_tested_here():
    tested = {"rgb8", "bgr8", "8uc3", "rgba8", "bgra8", "8uc4", "mono8", "8uc1", "mono16", "16uc1", "32fc1"}
    assert set(SUPPORTED_ENCODINGS) == tested


# ------------------------------------------------------------------ 16-bit and float encodings

MONO16 = np.array([[0, 255, 256, 0x1234], [0x8000, 0xFF00, 0xFFFF, 0x00FF]], dtype=np.uint16)
MONO16_EXPECTED = np.array([[0, 0, 1, 0x12], [0x80, 0xFF, 0xFF, 0x00]], dtype=np.uint8)  # value >> 8


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_shift_rule_both_byte_orders_with_odd_padding(bigendian):
    fmt = ">" if bigendian else "<"
    rows = [struct.pack(f"{fmt}4H", *map(int, row)) for row in MONO16]
    out = image_to_rgb(raw("mono16", 2, 4, rows, step=4 * 2 + 3, bigendian=bigendian))
    np.testing.assert_array_equal(out, np.repeat(MONO16_EXPECTED[:, :, None], 3, axis=2))


def test_mono16_byte_order_matters():
    """The same bytes read with the other byte order give a different picture."""
    rows = [struct.pack("<4H", *map(int, row)) for row in MONO16]
    little = image_to_rgb(raw("mono16", 2, 4, rows, step=8, bigendian=False))
    big = image_to_rgb(raw("mono16", 2, 4, rows, step=8, bigendian=True))
    assert not np.array_equal(little, big)


@pytest.mark.parametrize("bigendian", [False, True])
def test_16uc1_depth_min_max_rule_both_byte_orders(bigendian):
    depth = [[0, 1000, 2000], [3000, 0, 2600]]  # millimetres, 0 = no return
    # nearest valid (1000) -> 255, farthest (3000) -> 1, linear; 0 stays 0.
    expected = np.array([[0, 255, 128], [1, 0, 52]], dtype=np.uint8)  # 2600: 255 - 1600 * 254 / 2000 = 51.8
    fmt = ">" if bigendian else "<"
    rows = [struct.pack(f"{fmt}3H", *row) for row in depth]
    out = image_to_rgb(raw("16UC1", 2, 3, rows, step=3 * 2 + 2, bigendian=bigendian))
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 1], out[:, :, 2])
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 1])


def test_32fc1_depth_invalid_values_stay_black():
    values = [float("nan"), 0.0, 1.0, 2.0, float("inf"), -1.0]
    out = image_to_rgb(raw("32FC1", 1, 6, [struct.pack("<6f", *values)], step=24))
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 255, 1, 0, 0])


def test_depth_rule_edge_cases():
    np.testing.assert_array_equal(depth_to_gray(np.zeros((2, 2), np.uint16)), np.zeros((2, 2), np.uint8))
    flat = np.array([[0, 700], [700, 700]], np.uint16)
    np.testing.assert_array_equal(depth_to_gray(flat), [[0, 255], [255, 255]])


# ------------------------------------------------------------------ property: any padding, any size


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 6), w=st.integers(1, 6), pad=st.integers(0, 7), bigendian=st.booleans(),
       encoding=st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16"]), seed=st.integers(0, 2**32 - 1))
def test_any_padding_and_size_matches_a_pixel_by_pixel_reference(h, w, pad, bigendian, encoding, seed):
    rng = np.random.default_rng(seed)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 1}[encoding]
    if encoding == "mono16":
        values = rng.integers(0, 65536, size=(h, w), dtype=np.uint16)
        rows = [struct.pack((">" if bigendian else "<") + f"{w}H", *map(int, values[r])) for r in range(h)]
        expected = [[[int(values[r, c]) >> 8] * 3 for c in range(w)] for r in range(h)]
    else:
        values = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        rows = [values[r].tobytes() for r in range(h)]
        order = {"rgb8": (0, 1, 2), "bgr8": (2, 1, 0), "rgba8": (0, 1, 2), "bgra8": (2, 1, 0), "mono8": (0, 0, 0)}
        expected = [[[int(values[r, c, i]) for i in order[encoding]] for c in range(w)] for r in range(h)]
    step = w * channels * (2 if encoding == "mono16" else 1) + pad
    out = image_to_rgb(raw(encoding, h, w, rows, step, bigendian))
    assert out.tolist() == expected


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_round_trip(encoding):
    frame = np.random.default_rng(1).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    msg = rgb_to_image_msg(frame, encoding, frame_id="cam")
    assert (msg.height, msg.width, msg.encoding, msg.header.frame_id) == (7, 5, encoding, "cam")
    assert msg.step == 5 * len(encoding.rstrip("8"))
    np.testing.assert_array_equal(image_to_rgb(msg), frame)


def test_mono_round_trips():
    gray = np.random.default_rng(2).integers(0, 256, (4, 6), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(rgb_to_image_msg(gray, "mono8"))[:, :, 1], gray)
    frame = np.random.default_rng(3).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(rgb_to_image_msg(frame, "mono8"))[:, :, 0],
                                  cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
    wide = np.random.default_rng(4).integers(0, 65536, (4, 6), dtype=np.uint16)
    msg = rgb_to_image_msg(wide, "mono16")
    assert msg.is_bigendian == 0 and msg.step == 12
    np.testing.assert_array_equal(image_to_rgb(msg)[:, :, 2], (wide >> 8).astype(np.uint8))
    depth = np.array([[0, 500], [1500, 1000]], np.uint16)
    np.testing.assert_array_equal(image_to_rgb(rgb_to_image_msg(depth, "16UC1"))[:, :, 0], [[0, 255], [1, 128]])


def test_stamp_is_carried():
    from builtin_interfaces.msg import Time

    msg = rgb_to_image_msg(rgb_frame(), stamp=Time(sec=12, nanosec=34))
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 34)
    cmsg = rgb_to_compressed_msg(rgb_frame(), stamp=Time(sec=5, nanosec=6), frame_id="f")
    assert (cmsg.header.stamp.sec, cmsg.header.stamp.nanosec, cmsg.header.frame_id) == (5, 6, "f")


def smooth_frame(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], axis=2).astype(np.uint8)


def test_png_round_trip_is_exact_and_jpeg_is_close():
    frame = smooth_frame()
    png = rgb_to_compressed_msg(frame, "png")
    assert png.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(compressed_to_rgb(png), frame)
    jpeg = rgb_to_compressed_msg(frame, "jpeg", quality=95)
    assert jpeg.format == "rgb8; jpeg compressed bgr8"
    out = compressed_to_rgb(jpeg)
    assert out.shape == frame.shape and out.dtype == np.uint8
    # Channel order survives (a swap would put the x ramp into blue: error ~100).
    assert np.abs(out.astype(int) - frame).mean() < 3.0


@pytest.mark.parametrize("fmt", ["jpeg", "JPEG", "jpg", "rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8", ""])
def test_jpeg_format_strings(fmt):
    msg = rgb_to_compressed_msg(smooth_frame(), "jpeg")
    msg.format = fmt
    assert compressed_to_rgb(msg).shape == (48, 64, 3)


@pytest.mark.parametrize("fmt", ["png", "PNG", "rgb8; png compressed bgr8", ""])
def test_png_format_strings(fmt):
    msg = rgb_to_compressed_msg(smooth_frame(), "png")
    msg.format = fmt
    np.testing.assert_array_equal(compressed_to_rgb(msg), smooth_frame())


def test_grey_png_decodes_to_three_equal_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    ok, data = cv2.imencode(".png", gray)
    msg = CompressedImage(format="png")
    msg.data = data.tobytes()
    np.testing.assert_array_equal(compressed_to_rgb(msg), np.repeat(gray[:, :, None], 3, axis=2))


# ------------------------------------------------------------------ invalid raw images


def test_error_type_is_a_value_error():
    assert issubclass(ImageConversionError, ValueError)


@pytest.mark.parametrize("mutate,message", [
    (lambda m: setattr(m, "encoding", "yuv422"), r"unsupported image encoding 'yuv422'.*rgb8"),
    (lambda m: setattr(m, "encoding", "bayer_rggb8"), r"unsupported image encoding"),
    (lambda m: setattr(m, "width", 0), r"0x3: width and height must be positive"),
    (lambda m: setattr(m, "height", 0), r"4x0: width and height must be positive"),
    (lambda m: setattr(m, "step", 11), r"step 11 is smaller than one row of 4 px x 3 channel\(s\) x 1 byte\(s\) = 12"),
    (lambda m: setattr(m, "data", bytes(m.data)[:-1]), r"data is 35 bytes, shorter than height 3 x step 12 = 36"),
    (lambda m: setattr(m, "data", bytes(m.data) + b"\0"), r"data is 37 bytes, longer than height 3 x step 12 = 36"),
    (lambda m: setattr(m, "data", b""), r"data is 0 bytes, shorter"),
])
def test_invalid_raw_images_raise_with_a_helpful_message(mutate, message):
    msg = raw("rgb8", 3, 4, [r.tobytes() for r in rgb_frame()], step=12)
    mutate(msg)
    with pytest.raises(ImageConversionError, match=message):
        image_to_rgb(msg)


def test_16bit_step_counts_bytes_per_pixel():
    msg = raw("mono16", 2, 4, [b"\0" * 7, b"\0" * 7], step=7)
    with pytest.raises(ImageConversionError, match=r"step 7 is smaller .* x 2 byte\(s\) = 8"):
        image_to_rgb(msg)


def test_pixel_limit():
    msg = raw("mono8", 10, 10, [b"\1" * 10] * 10, step=10)
    assert image_to_rgb(msg, max_pixels=100).shape == (10, 10, 3)  # at the limit: accepted
    with pytest.raises(ImageConversionError, match=r"10x10 = 100 pixels, over the limit of 99"):
        image_to_rgb(msg, max_pixels=99)
    # A header over 8K is refused before the (absent) data is looked at.
    huge = Image(height=4320, width=7681, encoding="rgb8", step=7681 * 3)
    with pytest.raises(ImageConversionError, match=rf"over the limit of {DEFAULT_MAX_PIXELS} pixels"):
        image_to_rgb(huge)


# ------------------------------------------------------------------ invalid compressed images


def compressed(fmt: str, data: bytes) -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = data
    return msg


def encoded(ext: str, frame: np.ndarray | None = None) -> bytes:
    ok, data = cv2.imencode(ext, (smooth_frame() if frame is None else frame)[:, :, ::-1])
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("fmt,data,message", [
    ("webp", None, r"unknown compressed format 'webp': expected jpeg or png"),
    ("rgb8; tiff compressed bgr8", None, r"unknown compressed format"),
    ("jpeg png", None, r"unknown compressed format"),
    ("16UC1; compressedDepth png", None, r"compressedDepth\) is not supported"),
    ("jpeg", b"", r"has no data"),
    ("", b"hello world, not an image", r"neither a JPEG nor a PNG signature"),
    ("jpeg", b"hello world, not an image", r"says jpeg but the data starts with bytes 68656c6c"),
    ("png", "jpeg-bytes", r"says png but the data starts with a JPEG signature"),
    ("jpeg", "png-bytes", r"says jpeg but the data starts with a PNG signature"),
])
def test_bad_compressed_format_or_data(fmt, data, message):
    data = {"jpeg-bytes": encoded(".jpg"), "png-bytes": encoded(".png"), None: encoded(".jpg")}.get(data, data)
    with pytest.raises(ImageConversionError, match=message):
        compressed_to_rgb(compressed(fmt, data))


@pytest.mark.parametrize("cut", [0.5, 0.98, 10, 3])
def test_truncated_jpeg(cut):
    data = encoded(".jpg")
    n = int(len(data) * cut) if isinstance(cut, float) else cut
    with pytest.raises(ImageConversionError, match=r"truncated"):
        compressed_to_rgb(compressed("jpeg", data[:n]))


@pytest.mark.parametrize("cut", [0.5, 0.99, 20])
def test_truncated_png(cut):
    data = encoded(".png")
    n = int(len(data) * cut) if isinstance(cut, float) else cut
    with pytest.raises(ImageConversionError, match=r"truncated"):
        compressed_to_rgb(compressed("png", data[:n]))


def test_corrupt_png_body():
    data = bytearray(encoded(".png"))
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(16)  # inside IDAT: the chunk CRC no longer matches
    with pytest.raises(ImageConversionError, match=r"(?i)png .* is corrupt"):
        compressed_to_rgb(compressed("png", bytes(data)))


def test_corrupt_jpeg_markers():
    data = b"\xff\xd8\xff\xe0" + b"\x00\x10" + b"\x00" * 14 + b"\x12\x34garbage" + b"\xff\xd9"
    with pytest.raises(ImageConversionError, match=r"JPEG data is corrupt: expected a marker"):
        compressed_to_rgb(compressed("jpeg", data))


def test_compressed_pixel_limit_is_checked_from_the_header():
    frame = smooth_frame()
    for ext in (".png", ".jpg"):
        msg = compressed("", encoded(ext, frame))
        assert compressed_to_rgb(msg, max_pixels=48 * 64).shape == (48, 64, 3)
        with pytest.raises(ImageConversionError, match=r"64x48 = 3072 pixels, over the limit of 3071"):
            compressed_to_rgb(msg, max_pixels=48 * 64 - 1)
    # A PNG header claiming 100000 x 100000 (a decompression bomb) is refused without decoding.
    data = bytearray(encoded(".png", frame))
    data[16:24] = struct.pack(">II", 100_000, 100_000)
    with pytest.raises(ImageConversionError, match=r"100000x100000 .* over the limit"):
        compressed_to_rgb(compressed("png", bytes(data)))


# ------------------------------------------------------------------ invalid arrays to publish


@pytest.mark.parametrize("arr,encoding,message", [
    (np.zeros((4, 4), np.uint8), "rgb8", r"rgb8 needs an \(H, W, 3\) uint8 RGB array, got \(4, 4\)"),
    (np.zeros((4, 4, 3), np.float32), "rgb8", r"got \(4, 4, 3\) float32"),
    (np.zeros((4, 4, 4), np.uint8), "bgr8", r"bgr8 needs an \(H, W, 3\)"),
    (np.zeros((4, 4), np.uint8), "mono16", r"mono16 needs an \(H, W\) uint16 array"),
    (np.zeros((4, 4), np.int16), "mono8", r"mono8 needs uint8"),
    (np.zeros((0, 4, 3), np.uint8), "rgb8", r"empty"),
    (np.zeros((4, 4, 3), np.uint8), "yuv422", r"cannot publish encoding 'yuv422'"),
])
def test_rgb_to_image_msg_rejects_bad_arrays(arr, encoding, message):
    with pytest.raises(ImageConversionError, match=message):
        rgb_to_image_msg(arr, encoding)


def test_rgb_to_compressed_msg_rejects_bad_input():
    with pytest.raises(ImageConversionError, match=r"cannot encode format 'webp'"):
        rgb_to_compressed_msg(rgb_frame(), "webp")
    with pytest.raises(ImageConversionError, match=r"quality 0 is outside 1..100"):
        rgb_to_compressed_msg(rgb_frame(), "jpeg", quality=0)
    with pytest.raises(ImageConversionError, match=r"non-empty \(H, W, 3\) uint8"):
        rgb_to_compressed_msg(np.zeros((4, 4), np.uint8))
