"""A picture of what the KV cache holds now (the memory map), as an HxWx3 uint8 RGB image.

One column per kept control step, oldest on the left, after one column for the pinned
instruction; each column's width is proportional to the tokens it occupies, so the whole plot
width is the cache's capacity (free capacity is the dark part on the right). Columns are
coloured by kind:

- pinned: the system prompt + instruction (never evicted),
- long-term: a step the action gate wrote to long-term memory,
- recent: an unwritten step still inside the recent window (``step > current - recent_steps``,
  the planner's own rule), kept while anything else can go,
- transient: an unwritten step outside the recent window: the first to go when the cache is full.

A written step inside the recent window is drawn long-term: that is what it will stay once it
leaves the window. The gate value of each kept step is drawn as a white line over the columns
(0 at the bottom of the plot band, 1 at the top); the step numbers are on the axis below.

Pure function of its inputs (no policy, no ROS): the node, the demo, replay and the Foxglove
server call it with ``Policy.memory_map()`` and ``Policy.stats()``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

# RGB colours of the kinds, the free capacity, the background, the gate line and the text.
KIND_COLORS: dict[str, tuple[int, int, int]] = {
    "pinned": (150, 90, 210),
    "long_term": (240, 150, 40),
    "recent": (70, 185, 110),
    "transient": (105, 125, 160),
}
FREE_COLOR = (44, 46, 54)
BACKGROUND = (22, 22, 26)
GATE_COLOR = (250, 250, 250)
TEXT_COLOR = (215, 215, 220)
SEPARATOR = (22, 22, 26)

AXIS_HEIGHT = 16  # px under the plot band for the step numbers
LEGEND_HEIGHT = 14  # px above the plot band for the legend
# The gate line stays inside [GATE_MARGIN, band height - GATE_MARGIN] of the band, so that the
# band's bottom rows (the "kind strip") show each column's colour whatever the gate values.
GATE_MARGIN = 6
KIND_STRIP = 4  # bottom rows of the band that the gate line never reaches

_FONT = cv2.FONT_HERSHEY_PLAIN
_FONT_SCALE = 0.8


@dataclass(frozen=True)
class Column:
    """One drawn column: pixels [x0, x1) of the plot, a kind, its step (-1 for pinned)."""

    x0: int
    x1: int
    kind: str
    step: int
    gate: float
    tokens: int


def step_kind(step: int, long_term: bool, current_step: int, recent_steps: int) -> str:
    if long_term:
        return "long_term"
    return "recent" if step > current_step - recent_steps else "transient"


def layout_columns(rows: Sequence[tuple[int, float, bool, int]], pinned_tokens: int, current_step: int,
                   recent_steps: int, width: int, capacity_tokens: int | None = None) -> list[Column]:
    """Where each column goes: rows are ``Policy.memory_map()`` tuples (step, gate, long-term, tokens).

    The scale is ``width / capacity_tokens`` pixels a token (``capacity_tokens`` None: the tokens
    in use, so the columns fill the width). Boundaries are rounded cumulative token counts, so
    the widths add up exactly and a column is never more than one pixel off its share; every
    column with tokens gets at least one pixel (it may then overlap its right neighbour's first).
    """
    total = int(pinned_tokens) + sum(int(r[3]) for r in rows)
    scale_tokens = max(int(capacity_tokens) if capacity_tokens else total, total, 1)
    px = width / scale_tokens
    cols: list[Column] = []
    cum = 0
    entries = ([(-1, 1.0, "pinned", int(pinned_tokens))] if pinned_tokens > 0 else []) + [
        (int(s), float(g), step_kind(int(s), bool(lt), current_step, recent_steps), int(t)) for s, g, lt, t in rows]
    for step, gate, kind, tokens in entries:
        x0 = int(round(cum * px))
        cum += tokens
        x1 = max(int(round(cum * px)), x0 + 1) if tokens > 0 else x0
        cols.append(Column(x0, min(x1, width), kind, step, gate, tokens))
    return cols


def render_memory_map(rows: Sequence[tuple[int, float, bool, int]], pinned_tokens: int, current_step: int,
                      recent_steps: int, width: int = 640, height: int = 160,
                      capacity_tokens: int | None = None, legend: bool = True) -> np.ndarray:
    """The memory map as a (height, width, 3) uint8 RGB image (see the module docstring)."""
    if width < 16 or height < AXIS_HEIGHT + 2 * GATE_MARGIN + KIND_STRIP + 4:
        raise ValueError(f"memory map {width}x{height} is too small")
    img = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    top = LEGEND_HEIGHT if legend and height >= 80 else 0
    bottom = height - AXIS_HEIGHT  # the band is rows [top, bottom)
    img[top:bottom] = FREE_COLOR
    cols = layout_columns(rows, pinned_tokens, current_step, recent_steps, width, capacity_tokens)
    for c in cols:
        if c.x1 > c.x0:
            img[top:bottom, c.x0:c.x1] = KIND_COLORS[c.kind]
    # Separators only where columns are wide enough that a 1-px gap does not hide one.
    for c in cols[1:]:
        if c.x1 - c.x0 >= 4 and 0 < c.x0 < width:
            img[top:bottom - KIND_STRIP, c.x0] = SEPARATOR
    _draw_gate_line(img, [c for c in cols if c.kind != "pinned"], top, bottom)
    _draw_axis(img, cols, bottom)
    if top:
        _draw_legend(img, current_step)
    return img


def gate_y(gate: float, top: int, bottom: int) -> int:
    """Row of a gate value in the band [top, bottom): 1 at the top margin, 0 above the kind strip."""
    hi, lo = top + GATE_MARGIN, bottom - KIND_STRIP - GATE_MARGIN
    return int(round(lo - min(max(float(gate), 0.0), 1.0) * (lo - hi)))


def _draw_gate_line(img: np.ndarray, cols: list[Column], top: int, bottom: int) -> None:
    """A step line: level with each column's gate value across its width, joined vertically."""
    prev: tuple[int, int] | None = None
    for c in cols:
        if c.x1 <= c.x0:
            continue
        y = gate_y(c.gate, top, bottom)
        if prev is not None:
            cv2.line(img, prev, (c.x0, y), GATE_COLOR, 1, cv2.LINE_8)
        cv2.line(img, (c.x0, y), (c.x1 - 1, y), GATE_COLOR, 1, cv2.LINE_8)
        prev = (c.x1 - 1, y)


def _draw_axis(img: np.ndarray, cols: list[Column], bottom: int) -> None:
    """Step numbers under the columns, left to right, skipping any that would overlap the last."""
    width = img.shape[1]
    (digit_w, th), _ = cv2.getTextSize("0", _FONT, _FONT_SCALE, 1)
    next_free = 0
    for c in cols:
        centre = (c.x0 + c.x1) // 2
        label = "P" if c.kind == "pinned" else str(c.step)
        tw = digit_w * len(label)  # the Hershey digits are one width: no getTextSize per column
        x = max(0, min(centre - tw // 2, width - tw))
        if x < next_free:
            continue
        img[bottom:bottom + 2, centre] = TEXT_COLOR  # tick
        cv2.putText(img, label, (x, bottom + 3 + th), _FONT, _FONT_SCALE, TEXT_COLOR, 1, cv2.LINE_AA)
        next_free = x + tw + 4


def _draw_legend(img: np.ndarray, current_step: int) -> None:
    x = 2
    for kind, color in KIND_COLORS.items():
        cv2.rectangle(img, (x, 3), (x + 8, 10), color, -1)
        name = kind.replace("_", "-")
        cv2.putText(img, name, (x + 11, 11), _FONT, _FONT_SCALE, TEXT_COLOR, 1, cv2.LINE_AA)
        x += 11 + cv2.getTextSize(name, _FONT, _FONT_SCALE, 1)[0][0] + 8
    cv2.line(img, (x, 7), (x + 10, 7), GATE_COLOR, 1)
    cv2.putText(img, f"gate   step {current_step}", (x + 13, 11), _FONT, _FONT_SCALE, TEXT_COLOR, 1, cv2.LINE_AA)


def policy_memory_map(policy, width: int = 640, height: int = 160) -> np.ndarray:
    """The memory map of a ``Policy`` as it is now (after its last step)."""
    stats = policy.stats()
    return render_memory_map(policy.memory_map(), stats.pinned_tokens, current_step=max(policy.step_index - 1, 0),
                             recent_steps=policy.config.recent_steps, width=width, height=height,
                             capacity_tokens=stats.capacity_tokens)
