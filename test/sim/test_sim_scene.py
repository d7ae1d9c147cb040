"""The simulated robot (no ROS): frames follow commands, joints obey limits and speeds, events
and grasps happen when scheduled, and everything is deterministic given the seed."""
from __future__ import annotations

import math

import numpy as np
import pytest

from aura_ros.sim.scene import (
    COLORS,
    GRASP_RADIUS,
    INITIAL_POSITIONS,
    JOINT_LOWER,
    JOINT_NAMES,
    JOINT_UPPER,
    MAX_ANGULAR_SPEED,
    MAX_JOINT_VELOCITY,
    MAX_LINEAR_SPEED,
    ScriptedEvent,
    SimScene,
)


def color_pixels(frame: np.ndarray, color: str, tol: int = 30) -> int:
    """Pixels within ``tol`` of a named colour in every channel."""
    return int(np.all(np.abs(frame.astype(int) - COLORS[color]) <= tol, axis=2).sum())


def quiet(**kw) -> SimScene:
    """A scene without periodic events, so that only what a test does changes it."""
    return SimScene(event_period_steps=0, **kw)


# ------------------------------------------------------------------ frames


@pytest.mark.parametrize("size", [(96, 96), (640, 480), (160, 120), (64, 200)])
def test_render_shape_and_type(size):
    w, h = size
    frame = SimScene(width=w, height=h).render()
    assert frame.shape == (h, w, 3) and frame.dtype == np.uint8
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 5  # a picture, not a blank


def test_initial_objects_are_visible_in_their_colours():
    frame = quiet(width=320, height=320).render()
    for color in ("red", "green", "blue", "purple"):
        assert color_pixels(frame, color) > 20, color


@pytest.mark.parametrize("bad", [dict(width=0), dict(height=15), dict(width=96.0), dict(width=10_000),
                                 dict(event_period_steps=-1), dict(max_objects=0)])
def test_bad_construction_raises(bad):
    with pytest.raises(ValueError):
        SimScene(**bad)


def test_deterministic_given_the_seed():
    commands = [[0.5, 0.2, -0.3, 0.0], [1.0, -0.4, 0.8, 1.0], [-0.2, 0.3, 0.0, 0.0]]

    def run(seed):
        scene = SimScene(seed=seed, event_period_steps=3)
        frames = []
        for i in range(12):
            scene.step(0.1, commands[i % 3], base_velocity=(0.1, 0.2))
            frames.append(scene.render())
        return frames, scene.joint_state()[1], [(e.step, e.kind, e.detail) for e in scene.events_fired]

    a, b, c = run(7), run(7), run(8)
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[0][0], c[0][0])  # another seed, another layout
    assert a[2] != c[2]


def test_frame_follows_the_commanded_action():
    """Same start, different command -> different frame; same command -> the same frame."""
    a, b, c = quiet(), quiet(), quiet()
    before = a.render()
    a.apply_position_command([1.0, 0.5, 0.0, 0.0], 0.1)
    b.apply_position_command([-1.0, 0.5, 0.0, 0.0], 0.1)
    c.apply_position_command([1.0, 0.5, 0.0, 0.0], 0.1)
    fa, fb, fc = a.render(), b.render(), c.render()
    assert not np.array_equal(fa, before)
    assert not np.array_equal(fa, fb)
    np.testing.assert_array_equal(fa, fc)


def test_small_joint_motion_changes_the_small_frame():
    """Sub-pixel drawing: a 0.02 rad wrist move shows even at 96x96."""
    a = quiet()
    before = a.render()
    target = np.array(INITIAL_POSITIONS)
    target[2] += 0.02
    a.apply_position_command(target, 0.1)
    assert not np.array_equal(a.render(), before)


def test_gripper_closing_changes_the_frame():
    a = quiet()
    before = a.render()
    for _ in range(5):
        a.apply_position_command({"gripper": 1.0}, 0.1)
    assert a.joint_state()[1][3] == 1.0
    assert not np.array_equal(a.render(), before)


def test_holding_still_gives_identical_frames():
    a = quiet()
    first = a.render()
    for _ in range(3):
        a.step(0.1)
    np.testing.assert_array_equal(a.render(), first)


# ------------------------------------------------------------------ joints


def test_joint_state_names_and_initial_positions():
    names, positions, velocities = quiet().joint_state()
    assert names == ["shoulder", "elbow", "wrist", "gripper"] == list(JOINT_NAMES)
    np.testing.assert_array_equal(positions, INITIAL_POSITIONS)
    np.testing.assert_array_equal(velocities, 0.0)


def test_joints_move_at_most_max_velocity_and_then_arrive():
    scene = quiet()
    target = np.array([2.0, -2.0, 2.5, 1.0])
    scene.apply_position_command(target, 0.1)
    _, pos, vel = scene.joint_state()
    start = np.array(INITIAL_POSITIONS)
    expected_step = np.sign(target - start) * MAX_JOINT_VELOCITY * 0.1
    np.testing.assert_allclose(pos - start, expected_step)
    np.testing.assert_allclose(vel, expected_step / 0.1)
    for _ in range(40):  # no new command: the joints keep going to the last target
        scene.step(0.1)
    _, pos, vel = scene.joint_state()
    np.testing.assert_allclose(pos, target)
    np.testing.assert_array_equal(vel, 0.0)


def test_targets_are_clipped_to_the_joint_limits():
    scene = quiet()
    scene.set_position_targets([10.0, -10.0, 4.0, 2.0])
    np.testing.assert_array_equal(scene.targets, [JOINT_UPPER[0], JOINT_LOWER[1], JOINT_UPPER[2], JOINT_UPPER[3]])
    for _ in range(80):
        scene.step(0.1)
    _, pos, _ = scene.joint_state()
    assert np.all(pos >= JOINT_LOWER) and np.all(pos <= JOINT_UPPER)


def test_partial_targets_by_name_keep_the_other_joints():
    scene = quiet()
    scene.set_position_targets({"wrist": -1.0})
    np.testing.assert_array_equal(scene.targets, [INITIAL_POSITIONS[0], INITIAL_POSITIONS[1], -1.0,
                                                  INITIAL_POSITIONS[3]])


@pytest.mark.parametrize("targets,message", [
    ([0.0, 0.0, 0.0], r"expected 4 positions .* got 3"),
    ([0.0] * 5, r"got 5"),
    ([0.0, math.nan, 0.0, 0.0], r"finite"),
    ([0.0, 0.0, math.inf, 0.0], r"finite"),
    ({"knee": 1.0}, r"unknown joint\(s\) \['knee'\]"),
    ({"elbow": math.nan}, r"finite"),
])
def test_bad_targets_raise_and_leave_the_targets(targets, message):
    scene = quiet()
    with pytest.raises(ValueError, match=message):
        scene.apply_position_command(targets, 0.1)
    np.testing.assert_array_equal(scene.targets, INITIAL_POSITIONS)
    assert scene.step_count == 0


@pytest.mark.parametrize("dt", [0.0, -0.1, math.nan, math.inf, 11.0])
def test_bad_dt_raises(dt):
    with pytest.raises(ValueError, match=r"dt must be"):
        quiet().step(dt)


# ------------------------------------------------------------------ mobile base


def test_velocity_command_moves_the_base_and_the_view():
    scene = quiet()
    before = scene.render()
    scene.apply_velocity_command(0.2, 0.0, 0.5)
    x, y, yaw = scene.base_pose
    assert (x, y, yaw) == pytest.approx((0.1, 0.0, 0.0))
    moved = scene.render()
    assert not np.array_equal(moved, before)
    # The camera rides on the base: objects move through the picture, the arm does not.
    assert scene.joint_state()[1].tolist() == list(INITIAL_POSITIONS)
    scene.apply_velocity_command(0.0, 1.0, 0.5)
    assert scene.base_pose[2] == pytest.approx(0.5)
    assert not np.array_equal(scene.render(), moved)


def test_turning_and_driving_integrates_the_heading():
    scene = quiet()
    for _ in range(10):
        scene.apply_velocity_command(0.3, 1.0, 0.1)  # one radian of a circle of radius 0.3 m
    x, y, yaw = scene.base_pose
    assert yaw == pytest.approx(1.0)
    assert (x, y) == pytest.approx((0.3 * math.sin(1.0), 0.3 * (1 - math.cos(1.0))), abs=1e-3)


def test_base_speed_is_clipped_and_nan_refused():
    scene = quiet()
    scene.apply_velocity_command(5.0, 0.0, 1.0)
    assert scene.base_pose[0] == pytest.approx(MAX_LINEAR_SPEED)
    scene.apply_velocity_command(0.0, -9.0, 0.1)
    assert scene.base_pose[2] == pytest.approx(-MAX_ANGULAR_SPEED * 0.1)
    with pytest.raises(ValueError, match=r"finite"):
        scene.apply_velocity_command(math.nan, 0.0, 0.1)


# ------------------------------------------------------------------ scripted events


def test_scripted_appear_recolor_vanish_by_step():
    events = [ScriptedEvent("appear", at_step=2, target="duck", color="yellow", position=(0.35, -0.2)),
              ScriptedEvent("recolor", at_step=4, target="red_block", color="cyan"),
              ScriptedEvent("vanish", at_step=6, target="duck")]
    scene = quiet(events=events, width=200, height=200)
    scene.step(0.1)
    assert "duck" not in [o.name for o in scene.objects]
    assert color_pixels(scene.render(), "yellow") == 0
    fired = scene.step(0.1)
    assert [e.kind for e in fired] == ["appear"]
    assert scene.get_object("duck").position.tolist() == [0.35, -0.2]
    assert color_pixels(scene.render(), "yellow") > 20
    red_before = color_pixels(scene.render(), "red")
    assert red_before > 20
    scene.step(0.1)
    scene.step(0.1)
    assert scene.get_object("red_block").color == "cyan"
    assert color_pixels(scene.render(), "red") == 0
    scene.step(0.1)
    scene.step(0.1)
    assert "duck" not in [o.name for o in scene.objects]
    assert color_pixels(scene.render(), "yellow") == 0
    assert [(e.step, e.kind) for e in scene.events_fired] == [(2, "appear"), (4, "recolor"), (6, "vanish")]


def test_scripted_event_by_time_and_gripper_close():
    scene = quiet(events=[ScriptedEvent("close_gripper", at_time_s=0.25)])
    scene.step(0.1)
    scene.step(0.1)
    assert scene.targets[3] == 0.0
    fired = scene.step(0.1)  # t = 0.3 >= 0.25
    assert [e.kind for e in fired] == ["close_gripper"]
    assert scene.targets[3] == 1.0
    for _ in range(5):
        scene.step(0.1)
    assert scene.joint_state()[1][3] == 1.0


def test_scripted_gripper_close_overrides_that_ticks_command():
    scene = quiet(events=[ScriptedEvent("close_gripper", at_step=1)])
    scene.apply_position_command([0.3, 0.9, 0.2, 0.0], 0.1)
    assert scene.targets[3] == 1.0


def test_periodic_events_take_turns():
    scene = SimScene(event_period_steps=3)
    for _ in range(15):
        scene.step(0.1)
    assert [(e.step, e.kind) for e in scene.events_fired if e.kind not in ("grasp", "release")] == [
        (3, "appear"), (6, "recolor"), (9, "close_gripper"), (12, "open_gripper"), (15, "vanish")]


def test_appear_beyond_max_objects_removes_the_oldest_object():
    scene = SimScene(event_period_steps=0, max_objects=4,
                     events=[ScriptedEvent("appear", at_step=1, target="extra", color="orange")])
    scene.step(0.1)
    names = [o.name for o in scene.objects]
    assert len(names) == 4 and "extra" in names and "red_block" not in names and "bin" in names


@pytest.mark.parametrize("kwargs,message", [
    (dict(kind="explode", at_step=1), r"unknown event kind"),
    (dict(kind="appear"), r"exactly one of"),
    (dict(kind="appear", at_step=1, at_time_s=1.0), r"exactly one of"),
    (dict(kind="appear", at_step=0), r"must be >= 1"),
    (dict(kind="recolor", at_step=1, color="mauve"), r"unknown colour 'mauve'"),
])
def test_bad_events_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScriptedEvent(**kwargs)


# ------------------------------------------------------------------ grasping


def test_object_under_the_closing_gripper_is_grasped_carried_and_released():
    scene = quiet()
    centre, _ = scene.gripper_pose()
    scene.add_object("cup", "yellow", centre + [0.01, -0.01])
    for _ in range(3):
        scene.apply_position_command({"gripper": 1.0}, 0.1)
    assert scene.held_object == "cup"
    assert [e.kind for e in scene.events_fired] == ["grasp"]
    for _ in range(5):
        scene.apply_position_command({"shoulder": -0.5, "gripper": 1.0}, 0.1)
    centre2, angle2 = scene.gripper_pose()
    cup = scene.get_object("cup")
    assert np.linalg.norm(centre2 - centre) > 0.2  # the gripper moved far ...
    assert np.linalg.norm(cup.position - centre2) == pytest.approx(math.hypot(0.01, 0.01))  # ... with the cup
    for _ in range(3):
        scene.apply_position_command({"gripper": 0.0}, 0.1)
    assert scene.held_object is None
    dropped_at = cup.position.copy()
    scene.apply_position_command({"shoulder": 0.5}, 0.1)
    np.testing.assert_array_equal(scene.get_object("cup").position, dropped_at)
    assert [e.kind for e in scene.events_fired] == ["grasp", "release"]


def test_a_held_object_rides_with_the_base():
    scene = quiet()
    centre, _ = scene.gripper_pose()
    scene.add_object("cup", "yellow", centre)
    scene.apply_position_command({"gripper": 1.0}, 1.0)
    scene.apply_velocity_command(0.4, 0.0, 1.0)
    np.testing.assert_allclose(scene.get_object("cup").position, scene.gripper_pose()[0])


def test_nothing_is_grasped_out_of_reach_or_a_bin():
    scene = quiet()
    centre, _ = scene.gripper_pose()
    scene.add_object("far", "yellow", centre + [GRASP_RADIUS * 1.5, 0.0])
    scene.add_object("box_bin", "orange", centre, shape="bin")
    scene.apply_position_command({"gripper": 1.0}, 1.0)
    assert scene.held_object is None


def test_object_api_validation():
    scene = quiet()
    with pytest.raises(ValueError, match=r"exists already"):
        scene.add_object("red_block", "red", (0.3, 0.0))
    with pytest.raises(ValueError, match=r"unknown colour"):
        scene.add_object("x", "mauve", (0.3, 0.0))
    with pytest.raises(ValueError, match=r"unknown shape"):
        scene.add_object("x", "red", (0.3, 0.0), shape="cone")
    with pytest.raises(ValueError, match=r"position must be"):
        scene.add_object("x", "red", (math.nan, 0.0))
    with pytest.raises(KeyError, match=r"no object named 'x'"):
        scene.remove_object("x")
