"""The memory-map image shows what the cache holds: a column per kept step, by kind and tokens."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from aura_ros.core.memory_map import (
    AXIS_HEIGHT,
    FREE_COLOR,
    KIND_COLORS,
    KIND_STRIP,
    layout_columns,
    policy_memory_map,
    render_memory_map,
    step_kind,
)

W, H = 400, 120
STRIP_ROW = H - AXIS_HEIGHT - KIND_STRIP // 2  # a row of the kind strip: no gate line, no separator


def column_kinds(img: np.ndarray) -> list[str | None]:
    """The kind each pixel column of the strip shows (None: free capacity)."""
    by_color = {c: k for k, c in KIND_COLORS.items()}
    by_color[FREE_COLOR] = None
    return [by_color[tuple(int(v) for v in px)] for px in img[STRIP_ROW]]


def test_columns_follow_kind_and_tokens():
    # pinned 20 tokens; step 3 long-term, 10 transient, 11 recent (window 2 at step 12: 11, 12), 12 written.
    rows = [(3, 0.9, True, 40), (10, 0.1, False, 40), (11, 0.0, False, 40), (12, 1.0, True, 40)]
    img = render_memory_map(rows, pinned_tokens=20, current_step=12, recent_steps=2, width=W, height=H,
                            capacity_tokens=200)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    kinds = column_kinds(img)
    # 2 px per token: pinned [0, 40), then 80 px per step, then free capacity [360, 400).
    expected = ["pinned"] * 40 + ["long_term"] * 80 + ["transient"] * 80 + ["recent"] * 80 + ["long_term"] * 80 \
        + [None] * 40
    assert kinds == expected


def test_gate_line_height_follows_gate_value():
    rows = [(1, 1.0, True, 50), (2, 0.0, False, 50)]
    img = render_memory_map(rows, pinned_tokens=0, current_step=2, recent_steps=1, width=200, height=H)
    white = np.all(img >= 240, axis=2)
    hi_rows = np.nonzero(white[:, 50])[0]  # centre of the gate-1.0 column
    lo_rows = np.nonzero(white[:, 150])[0]
    assert hi_rows.size and lo_rows.size and hi_rows.max() < lo_rows.min()


def test_tiny_columns_get_a_pixel_and_widths_add_up():
    rows = [(s, 0.0, False, 1) for s in range(50)]
    cols = layout_columns(rows, pinned_tokens=5, current_step=49, recent_steps=8, width=30, capacity_tokens=1000)
    assert all(c.x1 - c.x0 >= 1 for c in cols)
    assert cols[0].kind == "pinned" and [c.step for c in cols[1:]] == list(range(50))


def test_empty_cache_and_too_small_image():
    img = render_memory_map([], pinned_tokens=0, current_step=0, recent_steps=8, width=64, height=H)
    assert set(column_kinds(img)) == {None}
    with pytest.raises(ValueError, match="too small"):
        render_memory_map([], 0, 0, 8, width=8, height=8)


def test_image_matches_the_cache_of_a_scripted_episode():
    """A real policy over a scripted sim episode: every kept step's column shows its kind, in order."""
    from aura_ros.core.config import PolicyConfig
    from aura_ros.core.registry import make_policy
    from aura_ros.core.types import Observation
    from aura_ros.sim.scene import SimScene

    policy = make_policy(None, PolicyConfig(budget_bytes=256 * 1024, recent_steps=4),
                         instruction="pick up the red block")
    scene = SimScene(seed=3, event_period_steps=5)
    for i in range(24):
        _, pos, _ = scene.joint_state()
        action = policy.step(Observation(scene.render(), pos, event=i % 7 == 3))  # scripted sub-task events
        scene.apply_position_command(action.first, 0.1)
    stats = policy.stats()
    rows = policy.memory_map()
    assert stats.evictions_total > 0, "the budget should force evictions in 24 steps"
    img = policy_memory_map(policy, width=W, height=H)
    cols = layout_columns(rows, stats.pinned_tokens, policy.step_index - 1, policy.config.recent_steps, W,
                          stats.capacity_tokens)
    kinds = column_kinds(img)
    assert [c.step for c in cols if c.kind != "pinned"] == [r[0] for r in rows] == stats.kept_steps
    for c, r in zip([c for c in cols if c.kind != "pinned"], rows):
        assert c.kind == step_kind(r[0], r[2], policy.step_index - 1, policy.config.recent_steps)
        # Interior pixels show the kind (a boundary pixel may belong to the neighbour after rounding).
        inner = kinds[c.x0 + 1:c.x1 - 1] or kinds[c.x0:c.x1]
        assert Counter(inner).most_common(1)[0][0] == c.kind, (c, Counter(inner))
    long_term_px = sum(k == "long_term" for k in kinds)
    expected_px = sum(r[3] for r in rows if r[2]) * W / stats.capacity_tokens
    assert abs(long_term_px - expected_px) <= len(rows) + 1
    used_px = sum(k is not None for k in kinds)
    assert abs(used_px - stats.used_tokens * W / stats.capacity_tokens) <= 2
