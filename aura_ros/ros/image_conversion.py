"""sensor_msgs/Image and CompressedImage <-> HxWx3 uint8 RGB arrays, with numpy and OpenCV only.

Why not cv_bridge: the PyPI ``cv-bridge`` is ROS 1 code that fails with numpy 2 (``tostring``,
wrong channel counts, 16UC1 silently mapped to 8 bits), and a real Jazzy install's compiled
cv_bridge breaks under numpy 2 as well (see ENVIRONMENT.md). Trying it first and falling back
would make the output depend on what happens to be installed, so this module is the one path:
every encoding below is read from the raw bytes, honouring ``step`` (row padding) and
``is_bigendian``.

Every function here is pure (no node state) and raises ``ImageConversionError`` (a ValueError)
with a message that says what is wrong, so that a node can drop and count a bad frame.

16-bit and float images are scaled to 8 bits by a fixed, stated rule:
- ``mono16``: an intensity image over the full 16-bit scale: ``value >> 8`` (the same scale as
  cv_bridge's mono16 -> mono8, 255/65535 up to rounding). Stable from frame to frame, so a
  brightness change in the scene stays a change in the image.
- ``16UC1`` and ``32FC1``: the depth encodings (millimetres, metres). A fixed shift would turn a
  room-sized depth image (0..~10000 mm) almost black, so each frame is stretched min-max over
  its *valid* pixels (non-zero and finite): the nearest valid pixel -> 255, the farthest -> 1,
  linearly in between (near is bright, as in most depth viewers). 0 (and NaN/inf for 32FC1) means
  "no measurement" in REP 118 and stays 0. A frame whose valid pixels are all equal maps them to 255.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image

# 8K UHD (7680x4320) is the largest frame accepted by default: larger ones are refused before
# any pixel is touched, so a corrupt header cannot make a node allocate gigabytes.
DEFAULT_MAX_PIXELS = 7680 * 4320


class ImageConversionError(ValueError):
    """A message that cannot be turned into an RGB frame (or an array that cannot be published)."""


@dataclass(frozen=True)
class _Layout:
    dtype: str  # numpy dtype without byte order: 'u1', 'u2', 'f4'
    channels: int
    kind: str  # how to reach RGB: 'rgb', 'bgr', 'rgba', 'bgra', 'gray', 'mono16', 'depth'


# sensor_msgs/image_encodings names (lower case, as the constants are spelt). The generic
# OpenCV-style names are aliases with cv_bridge's meaning: channels are taken in the order they
# come (cv_bridge converts a generic 8UC3 to rgb8 without swapping).
_ENCODINGS: dict[str, _Layout] = {
    "rgb8": _Layout("u1", 3, "rgb"),
    "bgr8": _Layout("u1", 3, "bgr"),
    "rgba8": _Layout("u1", 4, "rgba"),
    "bgra8": _Layout("u1", 4, "bgra"),
    "mono8": _Layout("u1", 1, "gray"),
    "8uc1": _Layout("u1", 1, "gray"),
    "8uc3": _Layout("u1", 3, "rgb"),
    "8uc4": _Layout("u1", 4, "rgba"),
    "mono16": _Layout("u2", 1, "mono16"),
    "16uc1": _Layout("u2", 1, "depth"),
    "32fc1": _Layout("f4", 1, "depth"),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)

_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk's type and its (fixed) CRC


def image_to_rgb(msg: Image, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return the frame of ``msg`` as a new (height, width, 3) uint8 RGB array.

    Raises ImageConversionError for an unsupported encoding, a zero or oversized frame, a
    ``step`` too small for a row, or ``data`` whose length is not exactly ``height * step``.
    """
    encoding = msg.encoding.strip().lower()
    layout = _ENCODINGS.get(encoding)
    if layout is None:
        raise ImageConversionError(f"unsupported image encoding {msg.encoding!r}; supported: "
                                   f"{', '.join(SUPPORTED_ENCODINGS)}")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    _check_size(width, height, max_pixels)
    itemsize = np.dtype(layout.dtype).itemsize
    row_bytes = width * layout.channels * itemsize
    if step < row_bytes:
        raise ImageConversionError(f"step {step} is smaller than one row of {width} px x {layout.channels} "
                                   f"channel(s) x {itemsize} byte(s) = {row_bytes} bytes ({msg.encoding})")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    expected = height * step
    if data.size != expected:
        relation = "shorter" if data.size < expected else "longer"
        raise ImageConversionError(f"data is {data.size} bytes, {relation} than height {height} x step {step} "
                                   f"= {expected} bytes")
    # Rows first, padding cut off, then the bytes are read as pixels in the sender's byte order.
    rows = data.reshape(height, step)[:, :row_bytes]
    order = ">" if msg.is_bigendian else "<"
    pixels = np.ascontiguousarray(rows).view(np.dtype(order + layout.dtype) if itemsize > 1 else np.uint8)
    pixels = pixels.reshape(height, width, layout.channels)
    return _to_rgb(pixels, layout.kind)


def _to_rgb(pixels: np.ndarray, kind: str) -> np.ndarray:
    if kind == "rgb":
        return pixels.copy()
    if kind == "bgr":
        return np.ascontiguousarray(pixels[:, :, ::-1])
    if kind == "rgba":
        return np.ascontiguousarray(pixels[:, :, :3])
    if kind == "bgra":
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    if kind == "gray":
        return np.repeat(pixels, 3, axis=2)
    if kind == "mono16":
        gray = (pixels[:, :, 0].astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if kind == "depth":
        return np.repeat(depth_to_gray(pixels[:, :, 0])[:, :, None], 3, axis=2)
    raise AssertionError(f"unhandled layout kind {kind}")  # every _ENCODINGS kind is handled above


def depth_to_gray(depth: np.ndarray) -> np.ndarray:
    """Depth (any numeric dtype, HxW) -> uint8 by the module's rule: valid min..max -> 255..1, invalid 0."""
    values = depth.astype(np.float64)
    valid = np.isfinite(values) & (values > 0)
    out = np.zeros(depth.shape, dtype=np.uint8)
    if not valid.any():
        return out
    near, far = values[valid].min(), values[valid].max()
    if far == near:
        out[valid] = 255
        return out
    # Nearest -> 255, farthest -> 1: 0 stays reserved for "no measurement".
    scaled = 255.0 - (values[valid] - near) * (254.0 / (far - near))
    out[valid] = np.clip(np.rint(scaled), 1, 255).astype(np.uint8)
    return out


def compressed_to_rgb(msg: CompressedImage, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a JPEG or PNG CompressedImage to a new (height, width, 3) uint8 RGB array.

    ``format`` may be image_transport's ``"rgb8; jpeg compressed bgr8"`` or a bare ``"jpeg"`` /
    ``"png"``; an empty format is taken from the data's signature. The frame size is read from the
    header and checked against ``max_pixels`` before decoding (no decompression bombs).
    Raises ImageConversionError for an unknown format, a format that does not match the data,
    and empty, truncated or corrupt data.
    """
    data = bytes(msg.data)
    declared = _declared_format(msg.format)
    if not data:
        raise ImageConversionError(f"compressed image ({msg.format!r}) has no data")
    sniffed = "jpeg" if data.startswith(_JPEG_SOI) else "png" if data.startswith(_PNG_SIGNATURE) else None
    if declared is None and sniffed is None:
        raise ImageConversionError(f"compressed format {msg.format!r} is empty and the data starts with neither "
                                   f"a JPEG nor a PNG signature (first bytes {data[:8].hex()})")
    fmt = declared or sniffed
    if sniffed != fmt:
        found = {"jpeg": "a JPEG signature", "png": "a PNG signature", None: f"bytes {data[:8].hex()}"}[sniffed]
        raise ImageConversionError(f"format {msg.format!r} says {fmt} but the data starts with {found}")
    width, height = _jpeg_size(data) if fmt == "jpeg" else _png_size(data)
    _check_size(width, height, max_pixels)
    # A cut-off frame must not pass as a frame with a grey bottom: the end marker must be there.
    if fmt == "jpeg" and _JPEG_EOI not in data.rstrip(b"\x00")[-64:]:
        raise ImageConversionError(f"JPEG data ({len(data)} bytes) is truncated: no end-of-image marker")
    if fmt == "png" and not data.rstrip(b"\x00").endswith(_PNG_IEND):
        raise ImageConversionError(f"PNG data ({len(data)} bytes) is truncated: no IEND chunk at the end")
    # IMREAD_COLOR: always 3-channel 8-bit BGR (grey is expanded, alpha dropped, 16-bit PNG >> 8).
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageConversionError(f"{fmt} data ({len(data)} bytes, {width}x{height}) is corrupt: OpenCV could "
                                   f"not decode it")
    if decoded.shape[:2] != (height, width):
        raise ImageConversionError(f"{fmt} decoded to {decoded.shape[1]}x{decoded.shape[0]} but its header says "
                                   f"{width}x{height}")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _declared_format(fmt: str) -> str | None:
    """'jpeg' / 'png' from a CompressedImage format string, None when it is empty."""
    text = fmt.strip().lower()
    if not text:
        return None
    if "compresseddepth" in text:
        raise ImageConversionError(f"compressed format {fmt!r} (compressedDepth) is not supported; publish the "
                                   f"depth image raw or as 'png'")
    # image_transport writes "<source encoding>; <format> compressed <target encoding>".
    words = set(text.replace(";", " ").replace(",", " ").split())
    found = {"jpeg" if w in ("jpeg", "jpg") else w for w in words if w in ("jpeg", "jpg", "png")}
    if len(found) != 1:
        raise ImageConversionError(f"unknown compressed format {fmt!r}: expected jpeg or png "
                                   f"(e.g. 'jpeg', 'png', 'rgb8; jpeg compressed bgr8')")
    return found.pop()


def _png_size(data: bytes) -> tuple[int, int]:
    # Signature (8) + IHDR length (4) + b"IHDR" (4) + width (4) + height (4), big-endian.
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageConversionError(f"PNG data ({len(data)} bytes) is truncated or corrupt: no IHDR header")
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Width and height from the first start-of-frame segment (walks the marker segments)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageConversionError(f"JPEG data is corrupt: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        # SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise ImageConversionError(f"JPEG data ({len(data)} bytes) is truncated or corrupt: no frame header")


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageConversionError(f"image is {width}x{height}: width and height must be positive")
    if width * height > max_pixels:
        raise ImageConversionError(f"image is {width}x{height} = {width * height} pixels, over the limit of "
                                   f"{max_pixels} pixels")


# ---------------------------------------------------------------- arrays -> messages (publishing)

_OUT_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1")


def rgb_to_image_msg(arr: np.ndarray, encoding: str = "rgb8", frame_id: str = "",
                     stamp: Time | None = None) -> Image:
    """Build a tightly packed Image (step = width * bytes per pixel) from an array.

    ``arr``: (H, W, 3) uint8 RGB for rgb8/bgr8/rgba8/bgra8 (alpha 255) and mono8 (converted to
    grey with OpenCV's weights), or (H, W) uint8 for mono8, or (H, W) uint16 for mono16/16UC1
    (written little-endian, ``is_bigendian`` False).
    """
    arr = np.asarray(arr)
    if encoding not in _OUT_ENCODINGS:
        raise ImageConversionError(f"cannot publish encoding {encoding!r}; supported: {', '.join(_OUT_ENCODINGS)}")
    if encoding in ("mono16", "16UC1"):
        if arr.ndim != 2 or arr.dtype != np.uint16:
            raise ImageConversionError(f"{encoding} needs an (H, W) uint16 array, got {arr.shape} {arr.dtype}")
        pixels = arr.astype("<u2")
    elif encoding == "mono8" and arr.ndim == 2:
        if arr.dtype != np.uint8:
            raise ImageConversionError(f"mono8 needs uint8 values, got {arr.dtype}")
        pixels = arr
    else:
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ImageConversionError(f"{encoding} needs an (H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}")
        pixels = {
            "rgb8": lambda a: a,
            "bgr8": lambda a: a[:, :, ::-1],
            "rgba8": lambda a: np.dstack([a, np.full(a.shape[:2], 255, np.uint8)]),
            "bgra8": lambda a: np.dstack([a[:, :, ::-1], np.full(a.shape[:2], 255, np.uint8)]),
            "mono8": lambda a: cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY),
        }[encoding](arr)
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f"cannot publish an empty {width}x{height} image")
    pixels = np.ascontiguousarray(pixels)
    msg = Image()
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.is_bigendian = 0
    msg.step = pixels.nbytes // height
    msg.data = pixels.tobytes()
    return msg


def rgb_to_compressed_msg(arr: np.ndarray, fmt: str = "jpeg", quality: int = 90, frame_id: str = "",
                          stamp: Time | None = None) -> CompressedImage:
    """Encode an (H, W, 3) uint8 RGB array as a CompressedImage the way image_transport does.

    ``format`` is ``"rgb8; jpeg compressed bgr8"`` (or png): the source encoding, then the
    compressed one (OpenCV encodes BGR).
    """
    arr = np.asarray(arr)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or 0 in arr.shape:
        raise ImageConversionError(f"need a non-empty (H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}")
    fmt = fmt.lower()
    if fmt in ("jpeg", "jpg"):
        if not 1 <= quality <= 100:
            raise ImageConversionError(f"JPEG quality {quality} is outside 1..100")
        fmt, ext, params = "jpeg", ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif fmt == "png":
        ext, params = ".png", []
    else:
        raise ImageConversionError(f"cannot encode format {fmt!r}: expected 'jpeg' or 'png'")
    ok, encoded = cv2.imencode(ext, cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), params)
    if not ok:  # OpenCV reports failure without a reason; nothing above should let one through
        raise ImageConversionError(f"OpenCV could not encode a {arr.shape} frame as {fmt}")
    msg = CompressedImage()
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    msg.format = f"rgb8; {fmt} compressed bgr8"
    msg.data = encoded.tobytes()
    return msg
