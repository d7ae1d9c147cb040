"""sensor_msgs/Image and CompressedImage -> HxWx3 uint8 RGB arrays, with numpy and OpenCV only, no ROS.

The messages may be rclpy's or rosbags' (anything with the message's fields): the node decodes what
it receives, and bag readers (replay, ``aura_ros.data.bags``) decode what a bag holds, on machines
without the ROS wheels too (a training machine). ``aura_ros.ros.image_conversion`` re-exports these
functions beside the builders of messages it publishes.

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

import os
import struct
import sys
import tempfile
import threading
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

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


def image_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
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


def compressed_to_rgb(msg, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
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
    # A cut-off frame must not pass as a frame with a grey bottom: OpenCV's libjpeg fills missing
    # scan data with grey and only prints a warning, so the structure is checked here first.
    if fmt == "jpeg":
        _check_jpeg_structure(data)
    else:
        _check_png_structure(data)
    # IMREAD_COLOR: always 3-channel 8-bit BGR (grey is expanded, alpha dropped, 16-bit PNG >> 8).
    if fmt == "jpeg":
        decoded, warnings = _imdecode_with_libjpeg_warnings(data)
        # Junk between the last scan and the end marker ("... before marker 0xd9") is common from
        # some encoders and harmless; before any other marker it is a scan that lost data.
        corrupt = [w for w in warnings if not w.endswith("before marker 0xd9")]
        if corrupt:
            raise ImageConversionError(f"jpeg data ({len(data)} bytes, {width}x{height}) is corrupt: libjpeg says "
                                       f"{corrupt[0]!r}{f' (and {len(corrupt) - 1} more)' if len(corrupt) > 1 else ''}")
    else:
        decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ImageConversionError(f"{fmt} data ({len(data)} bytes, {width}x{height}) is corrupt: OpenCV could "
                                   f"not decode it")
    if decoded.shape[:2] != (height, width):
        raise ImageConversionError(f"{fmt} decoded to {decoded.shape[1]}x{decoded.shape[0]} but its header says "
                                   f"{width}x{height}")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


# libjpeg reports damage inside the entropy-coded data (a scan with bytes cut out of its middle and
# the end marker kept: "premature end of data segment", "bad Huffman code") only as a warning that
# it prints to stderr, and decodes the frame anyway, filling what is missing; OpenCV (and Pillow)
# expose no such warning, and finding it otherwise takes a full Huffman decode. So stderr (fd 2)
# is pointed at a temporary file for the length of the decode and the warnings are read from it;
# whatever else was written there meanwhile (another thread's log line) is written back to stderr.
# A file, not a pipe: a writer can never block on it. One decode at a time holds fd 2.
_STDERR_LOCK = threading.Lock()


def _imdecode_with_libjpeg_warnings(data: bytes) -> tuple[np.ndarray | None, list[str]]:
    with _STDERR_LOCK, tempfile.TemporaryFile() as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
    lines = text.splitlines(keepends=True)
    warnings = [line.strip() for line in lines if line.startswith(("Corrupt JPEG data", "Premature end of JPEG"))]
    others = "".join(line for line in lines if not line.startswith(("Corrupt JPEG data", "Premature end of JPEG")))
    if others:
        os.write(2, others.encode())
    return decoded, warnings


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


def _check_jpeg_structure(data: bytes) -> None:
    """Walk every marker segment and entropy-coded scan up to EOI; refuse a frame that cannot be whole.

    Refused: no frame header before the first scan, no scan at all, a scan whose entropy-coded data
    is missing or shorter than its blocks need (baseline Huffman: at least 2 bits a block, a DC
    code and an end-of-block; a progressive DC scan: at least 1 bit a block; any scan: 1 byte), and
    data that ends before the end-of-image marker. What this cannot see without a full entropy
    decode: a scan cut short inside, with an EOI appended, that is still longer than that bound
    (libjpeg's warnings during the decode catch that, see _imdecode_with_libjpeg_warnings).
    """
    n = len(data)
    pos, frame, scans = 2, None, 0
    while True:
        while pos < n and data[pos] == 0xFF and pos + 1 < n and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes before a marker
        if pos + 2 > n:
            raise ImageConversionError(f"JPEG data ({n} bytes) is truncated: no end-of-image marker")
        if data[pos] != 0xFF:
            raise ImageConversionError(f"JPEG data is corrupt: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn / TEM outside a scan: no length
            pos += 2
            continue
        if pos + 4 > n:
            raise ImageConversionError(f"JPEG data ({n} bytes) is truncated inside a marker segment")
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        end = pos + 2 + length
        if length < 2 or end > n:
            raise ImageConversionError(f"JPEG data ({n} bytes) is truncated or corrupt: a segment at byte {pos} "
                                       f"runs past the end")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame = _jpeg_frame(marker, data[pos + 4:end])
        elif marker == 0xDA:
            if frame is None:
                raise ImageConversionError("JPEG data is corrupt: a scan before the frame header")
            need = _jpeg_scan_min_bytes(frame, data[pos + 4:end])
            pos = _jpeg_scan(data, end, need)
            scans += 1
            continue
        pos = end
    if scans == 0:
        raise ImageConversionError(f"JPEG data ({n} bytes) has no scan data (no image content)")


def _jpeg_frame(marker: int, body: bytes) -> dict:
    if len(body) < 6:
        raise ImageConversionError("JPEG frame header is truncated")
    height, width, count = struct.unpack(">HH", body[1:5]) + (body[5],)
    if len(body) < 6 + 3 * count or count == 0:
        raise ImageConversionError("JPEG frame header is truncated")
    comps = {body[6 + 3 * i]: (body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(count)}
    if any(h == 0 or v == 0 for h, v in comps.values()):
        raise ImageConversionError("JPEG frame header is corrupt: a sampling factor of 0")
    return {"marker": marker, "width": width, "height": height, "comps": comps,
            "hmax": max(h for h, _ in comps.values()), "vmax": max(v for _, v in comps.values())}


def _jpeg_scan_min_bytes(frame: dict, body: bytes) -> int:
    """A lower bound on the entropy-coded bytes of the scan with header ``body``."""
    if not body or len(body) < 1 + 2 * body[0] + 3:
        raise ImageConversionError("JPEG scan header is truncated")
    ids = [body[1 + 2 * i] for i in range(body[0])]
    if any(c not in frame["comps"] for c in ids):
        raise ImageConversionError("JPEG scan names a component the frame does not have")
    ss, ah = body[1 + 2 * len(ids)], body[3 + 2 * len(ids)] >> 4
    w, h, hmax, vmax = frame["width"], frame["height"], frame["hmax"], frame["vmax"]
    if len(ids) == 1:
        ch, cv = frame["comps"][ids[0]]
        cw, chh = -(-w * ch // hmax), -(-h * cv // vmax)
        blocks = -(-cw // 8) * -(-chh // 8)
    else:
        mcus = -(-w // (8 * hmax)) * -(-h // (8 * vmax))
        blocks = mcus * sum(frame["comps"][c][0] * frame["comps"][c][1] for c in ids)
    marker = frame["marker"]
    if marker in (0xC0, 0xC1):  # baseline / extended sequential Huffman: DC code + EOB a block
        bits = 2 * blocks
    elif marker == 0xC2 and ss == 0 and ah == 0:  # progressive, first DC scan
        bits = blocks
    else:
        bits = 8
    return max(1, bits // 8)


def _jpeg_scan(data: bytes, pos: int, need: int) -> int:
    """Skip a scan's entropy-coded data from ``pos``; returns the position of the marker after it."""
    n, start, restarts = len(data), pos, 0
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= n:
            raise ImageConversionError(f"JPEG data ({n} bytes) is truncated inside the scan data "
                                       f"(no end-of-image marker)")
        nxt = data[pos + 1]
        if nxt == 0x00:  # a stuffed 0xFF data byte
            pos += 2
        elif 0xD0 <= nxt <= 0xD7:  # restart marker inside the scan
            restarts += 1
            pos += 2
        elif nxt == 0xFF:  # fill byte
            pos += 1
        else:
            break
    stuffed = data.count(b"\xff\x00", start, pos)
    got = pos - start - stuffed - 2 * restarts
    if got < need:
        raise ImageConversionError(f"JPEG scan data is cut: {got} bytes, its blocks need at least {need}")
    return pos


def _check_png_structure(data: bytes) -> None:
    """Every chunk whole and its CRC right, IHDR first, image data present, IEND last."""
    pos, seen_idat, first = 8, False, True
    body = data.rstrip(b"\x00")  # zero padding after IEND is tolerated (IEND's CRC ends in 0x82)
    n = len(body)
    while True:
        if pos + 12 > n:
            raise ImageConversionError(f"PNG data ({len(data)} bytes) is truncated: no IEND chunk at the end")
        length = struct.unpack(">I", body[pos:pos + 4])[0]
        kind = body[pos + 4:pos + 8]
        end = pos + 12 + length
        if length > 2**31 - 1 or end > n:
            raise ImageConversionError(f"PNG data ({len(data)} bytes) is truncated: the {kind!r} chunk at byte "
                                       f"{pos} runs past the end")
        crc = struct.unpack(">I", body[end - 4:end])[0]
        if zlib.crc32(body[pos + 4:end - 4]) != crc:
            raise ImageConversionError(f"PNG {kind!r} chunk at byte {pos} is corrupt (CRC mismatch)")
        if first and kind != b"IHDR":
            raise ImageConversionError("PNG data is corrupt: the first chunk is not IHDR")
        first = False
        seen_idat |= kind == b"IDAT"
        if kind == b"IEND":
            break
        pos = end
    if not seen_idat:
        raise ImageConversionError(f"PNG data ({len(data)} bytes) has no IDAT chunk (no image data)")
    if end != n:
        raise ImageConversionError(f"PNG data has {n - end} bytes after its IEND chunk")


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageConversionError(f"image is {width}x{height}: width and height must be positive")
    if width * height > max_pixels:
        raise ImageConversionError(f"image is {width}x{height} = {width * height} pixels, over the limit of "
                                   f"{max_pixels} pixels")
