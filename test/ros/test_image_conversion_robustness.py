"""Damaged compressed frames are refused; thin frames reach the processor channels-last.

JPEG: OpenCV's libjpeg decodes a frame whose scan data is missing or cut short into a grey
picture and only prints a warning, so the structure is checked before decoding. PNG: every chunk
and its CRC, IHDR first, IDAT present, IEND last. Thin frames: a (1, W, 3) or (3, W, 3) array is
taken for channels-first by the processors' shape guess; prepare_for_model keeps both sides >= 8.
"""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage

from aura_ros.ros.image_conversion import ImageConversionError, compressed_to_rgb, prepare_for_model


def frame(h=96, w=128, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), (w, h))
    return base


def jpeg(img=None, **params) -> bytes:
    flags = []
    for key, value in params.items():
        flags += [getattr(cv2, f"IMWRITE_JPEG_{key.upper()}"), value]
    ok, buf = cv2.imencode(".jpg", frame() if img is None else img, flags)
    assert ok
    return buf.tobytes()


def png(img=None, **params) -> bytes:
    flags = []
    for key, value in params.items():
        flags += [getattr(cv2, f"IMWRITE_PNG_{key.upper()}"), value]
    ok, buf = cv2.imencode(".png", frame() if img is None else img, flags)
    assert ok
    return buf.tobytes()


def msg(data: bytes, fmt: str = "") -> CompressedImage:
    m = CompressedImage(format=fmt)
    m.data = data
    return m


def scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each scan's entropy-coded data, found independently with a simple walk."""
    out, pos = [], 2
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            break
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        pos += 2 + length
        if marker == 0xDA:
            start = pos
            while not (data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8))):
                pos += 1
            out.append((start, pos))
    return out


JPEG_VARIANTS = {
    "baseline 4:2:0": {},
    "progressive": {"progressive": 1},
    "restart markers": {"rst_interval": 2},
    "4:4:4": {"sampling_factor": 0x111111},
}


@pytest.mark.parametrize("variant", sorted(JPEG_VARIANTS))
def test_whole_jpegs_of_every_kind_decode(variant):
    img = frame()
    out = compressed_to_rgb(msg(jpeg(img, **JPEG_VARIANTS[variant]), "jpeg"))
    assert out.shape == img.shape and np.abs(out.astype(int) - img[:, :, ::-1]).mean() < 12  # encoded as BGR


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (8, 8), (9, 17), (3, 200)])
def test_tiny_and_thin_jpegs_decode(shape):
    img = np.full((*shape, 3), 77, np.uint8)  # uniform: the smallest possible scans
    for variant in JPEG_VARIANTS.values():
        assert compressed_to_rgb(msg(jpeg(img, **variant))).shape == img.shape
    grey = cv2.imencode(".jpg", img[:, :, 0])[1].tobytes()
    assert compressed_to_rgb(msg(grey)).shape == img.shape


@pytest.mark.parametrize("variant", sorted(JPEG_VARIANTS))
def test_jpeg_with_its_scan_data_cut_out_is_refused(variant):
    data = jpeg(**JPEG_VARIANTS[variant])
    found = scans(data)
    assert found
    for start, end in found:  # each scan emptied in turn (the rest of the file intact)
        cut = data[:start] + data[end:]
        with pytest.raises(ImageConversionError, match="scan"):
            compressed_to_rgb(msg(cut, "jpeg"))
    first, _ = found[0]
    cut = data[:first] + b"\xff\xd9"  # the scan cut out, an end-of-image marker after the header
    with pytest.raises(ImageConversionError, match="scan"):
        compressed_to_rgb(msg(cut, "jpeg"))
    # What OpenCV makes of it (a grey frame, no error) is why the check is needed:
    assert cv2.imdecode(np.frombuffer(cut, np.uint8), cv2.IMREAD_COLOR) is not None


def test_baseline_jpeg_scan_cut_short_is_refused():
    data = jpeg(frame(256, 256))
    (start, end), = scans(data)
    for keep in (1, 10, 40):  # a 256x256 4:2:0 frame has 1536 blocks: at least 384 bytes
        with pytest.raises(ImageConversionError, match="scan data is cut"):
            compressed_to_rgb(msg(data[:start + keep] + b"\xff\xd9"))


@pytest.mark.parametrize("variant", sorted(JPEG_VARIANTS))
def test_jpeg_truncated_anywhere_before_its_end_is_refused(variant):
    data = jpeg(**JPEG_VARIANTS[variant])
    for n in sorted({*range(3, len(data) - 1, max(1, len(data) // 97)), len(data) - 2, len(data) - 1}):
        with pytest.raises(ImageConversionError):
            compressed_to_rgb(msg(data[:n], "jpeg"))
    assert compressed_to_rgb(msg(data, "jpeg")).shape == (96, 128, 3)


def chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    out, pos = [], 8
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        out.append((data[pos + 4:pos + 8], pos, pos + 12 + n))
        pos += 12 + n
    return out


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def many_idat_png() -> bytes:
    """A PNG with several IDAT chunks (the stream split across them), built by hand."""
    data = png(frame(64, 64, seed=3), compression=1)
    parts = chunks(data)
    stream = b"".join(data[s + 8:e - 4] for kind, s, e in parts if kind == b"IDAT")
    ihdr = next(data[s:e] for kind, s, e in parts if kind == b"IHDR")
    pieces = [stream[i:i + 1024] for i in range(0, len(stream), 1024)]
    assert len(pieces) >= 3
    return data[:8] + ihdr + b"".join(chunk(b"IDAT", p) for p in pieces) + chunk(b"IEND", b"")


def test_png_with_idat_or_iend_cut_is_refused():
    data = many_idat_png()
    assert compressed_to_rgb(msg(data, "png")).shape == (64, 64, 3)
    parts = chunks(data)
    idats = [(s, e) for kind, s, e in parts if kind == b"IDAT"]
    iend = next((s, e) for kind, s, e in parts if kind == b"IEND")
    damaged = {
        "last IDAT dropped": data[:idats[-1][0]] + data[idats[-1][1]:],
        "middle IDAT dropped": data[:idats[1][0]] + data[idats[1][1]:],
        "all IDAT dropped": data[:idats[0][0]] + data[iend[0]:],
        "last IDAT cut and re-signed": data[:idats[-1][0]]
        + chunk(b"IDAT", data[idats[-1][0] + 8:idats[-1][1] - 4][:-30]) + data[iend[0]:],
        "IEND dropped": data[:iend[0]],
        "IEND cut": data[:iend[0] + 6],
        "IEND CRC wrong": data[:-1] + b"\x00",
        "garbage after IEND": data + b"trailing",
    }
    for name, bad in damaged.items():
        with pytest.raises(ImageConversionError):
            compressed_to_rgb(msg(bad, "png"))
            pytest.fail(name)
    assert compressed_to_rgb(msg(data + b"\x00" * 7, "png")).shape == (64, 64, 3)  # zero padding is fine


def test_png_truncated_anywhere_is_refused():
    data = many_idat_png()
    for n in range(9, len(data), max(1, len(data) // 101)):
        with pytest.raises(ImageConversionError):
            compressed_to_rgb(msg(data[:n], "png"))


@pytest.mark.parametrize("img", [np.zeros((5, 9, 3), np.uint8), np.zeros((5, 9), np.uint16) + 4000,
                                 np.zeros((5, 9, 4), np.uint8) + 9])
def test_other_whole_pngs_decode(img):
    ok, buf = cv2.imencode(".png", img)
    assert compressed_to_rgb(msg(buf.tobytes())).shape == (5, 9, 3)


# ------------------------------------------------------------------ prepare_for_model


@pytest.mark.parametrize("shape,expected", [
    ((480, 640), (384, 512)),  # downscaled, aspect kept
    ((4320, 7680), (288, 512)),
    ((100, 50), (100, 50)),  # small enough: unchanged
    ((1, 600), (8, 512)),  # a line: downscaled, then padded to the minimum
    ((3, 40), (8, 40)),  # height 3: would be read as 3 channels first
    ((2000, 3), (512, 8)),
    ((4320, 30), (512, 8)),  # the downscale makes it 3.6 -> 4 wide: padded
    ((1, 1), (8, 8)),
    ((8, 8), (8, 8)),
])
def test_prepare_for_model_sizes(shape, expected):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    before = img.copy()
    out = prepare_for_model(img)
    assert out.shape == (*expected, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert max(out.shape[:2]) <= 512 and min(out.shape[:2]) >= 8
    assert np.array_equal(img, before) and out is not img  # the input is left alone
    if shape == expected:
        assert np.array_equal(out, img)


def test_padding_repeats_the_edge_and_keeps_the_content_centred():
    row = np.arange(40 * 3, dtype=np.uint8).reshape(1, 40, 3)
    out = prepare_for_model(row)
    assert out.shape == (8, 40, 3)
    assert all(np.array_equal(out[i], row[0]) for i in range(8))
    three = np.stack([np.full((40, 3), v, np.uint8) for v in (10, 20, 30)])
    out = prepare_for_model(three)
    assert [int(out[i, 0, 0]) for i in range(8)] == [10, 10, 10, 20, 30, 30, 30, 30]


def test_prepare_for_model_refuses_what_is_not_an_rgb_frame():
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32),
                np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ImageConversionError):
            prepare_for_model(bad)
    with pytest.raises(ValueError):
        prepare_for_model(np.zeros((4, 4, 3), np.uint8), max_side=4, min_side=8)


@pytest.mark.parametrize("shape", [(1, 600), (3, 40), (4320, 30), (1, 1)])
def test_thin_frames_reach_the_processor_channels_last(shape):
    from transformers.image_utils import ChannelDimension, infer_channel_dimension_format

    img = np.full((*shape, 3), 200, np.uint8)
    out = prepare_for_model(img)
    assert infer_channel_dimension_format(out) == ChannelDimension.LAST
    if shape[0] in (1, 3):  # the failure prepare_for_model prevents
        assert infer_channel_dimension_format(img) == ChannelDimension.FIRST


def test_thin_frames_step_the_default_policy():
    """Through the real processor and model: a prepared 1-pixel-high frame is a normal step."""
    from aura_ros.backends.transformers.policy import VLMPolicy
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.types import Observation

    pol = VLMPolicy.from_pretrained(None, PolicyConfig(budget_bytes=256 * 1024), instruction="look")
    for shape in ((1, 600), (3, 40), (600, 1)):
        action = pol.step(Observation(prepare_for_model(np.full((*shape, 3), 90, np.uint8)), np.zeros(4)))
        assert np.all(np.isfinite(action.positions))
    assert pol.step_index == 3


@pytest.mark.parametrize("variant", sorted(JPEG_VARIANTS))
def test_jpeg_with_part_of_its_scan_cut_and_the_end_kept_is_refused(variant, capfd):
    """Longer than any structural bound, so only the entropy decode sees it: libjpeg's warning
    ("premature end of data segment", ...) is the refusal, and it does not reach the console."""
    data = jpeg(frame(192, 256), **JPEG_VARIANTS[variant])
    start, end = max(scans(data), key=lambda s: s[1] - s[0])  # the longest scan

    def clean(i: int) -> int:  # never between a 0xFF and the byte it escapes
        while data[i - 1] == 0xFF:
            i += 1
        return i
    a, b = clean(start + (end - start) * 4 // 10), clean(start + (end - start) * 7 // 10)
    for cut in (data[:a] + data[b:], data[:b] + b"\xff\xd9"):
        with pytest.raises(ImageConversionError, match="libjpeg says"):
            compressed_to_rgb(msg(cut, "jpeg"))
    assert "Corrupt JPEG data" not in capfd.readouterr().err


def test_jpeg_decoding_keeps_what_others_write_to_stderr(capfd):
    import os
    import threading

    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            os.write(2, b"another thread's line\n")
            stop.wait(0.001)
    t = threading.Thread(target=chatter)
    t.start()
    try:
        for _ in range(50):
            compressed_to_rgb(msg(jpeg(), "jpeg"))
    finally:
        stop.set()
        t.join()
    err = capfd.readouterr().err
    assert err.count("another thread's line\n") == len(err.splitlines()) > 0
