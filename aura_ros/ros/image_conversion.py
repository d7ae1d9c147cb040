"""sensor_msgs/Image and CompressedImage <-> HxWx3 uint8 RGB arrays, with numpy and OpenCV only.

Decoding (``image_to_rgb``, ``compressed_to_rgb``, the encodings and the 8-bit scaling rules) lives
in ``aura_ros.core.images``, which needs no ROS (bag readers use it on machines without the ROS
wheels); it is re-exported here. This module adds what needs the message classes: the frame the
model gets, and the Image / CompressedImage messages the nodes publish.
"""
from __future__ import annotations

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image

from aura_ros.core.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    compressed_to_rgb,
    depth_to_gray,
    image_to_rgb,
)

__all__ = ["DEFAULT_MAX_PIXELS", "SUPPORTED_ENCODINGS", "ImageConversionError", "compressed_to_rgb", "depth_to_gray",
           "image_to_rgb", "prepare_for_model", "rgb_to_compressed_msg", "rgb_to_image_msg"]


# ---------------------------------------------------------------- frames -> the model's input

def prepare_for_model(rgb: np.ndarray, max_side: int = 512, min_side: int = 8) -> np.ndarray:
    """The frame the VLM processor gets: longest side at most ``max_side``, shortest at least ``min_side``.

    Larger frames are downscaled with cv2.INTER_AREA (aspect ratio kept, each side at least one
    pixel). A frame whose short side is then under ``min_side`` is padded by repeating its edge
    pixels, centred, up to ``min_side``: upscaling would stretch a thin strip into a different
    picture and could push the long side past ``max_side``. Why a minimum: image processors guess
    where the channels are from the shape, and a (1, W, 3) or (3, W, 3) array is taken for
    channels-first (``infer_channel_dimension_format`` looks at the first axis first), which
    misreads the frame or fails; with both sides >= 8 the guess is always channels-last.
    Returns a new C-contiguous (H, W, 3) uint8 array; the input is not modified.
    """
    if not 1 <= min_side <= max_side:
        raise ValueError(f"need 1 <= min_side <= max_side, got min_side={min_side}, max_side={max_side}")
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageConversionError(f"expected an (H, W, 3) uint8 RGB frame, got {arr.dtype} {arr.shape}")
    h, w = arr.shape[:2]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (min(max_side, max(1, round(w * scale))), min(max_side, max(1, round(h * scale))))
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
        h, w = arr.shape[:2]
    if min(h, w) < min_side:
        dh, dw = max(0, min_side - h), max(0, min_side - w)
        arr = cv2.copyMakeBorder(arr, dh // 2, dh - dh // 2, dw // 2, dw - dw // 2, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(arr) if arr is not rgb else arr.copy()


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
