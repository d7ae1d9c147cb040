"""A planar arm with a gripper on a mobile base, seen from above by a camera on the base, with
objects on a table. Pure numpy + OpenCV: the sim node wraps it in ROS, the demo and the
benchmarks step it directly.

Frames used below:
- world: metres on the floor plane, fixed; the table and the objects live here.
- base: the robot's base (x forward, y left, yaw about z), moved by velocity commands. The arm's
  shoulder is at the base origin and the camera looks straight down at it, so the image follows
  the base: driving moves the table and objects through the picture.
- image: the base origin is the image centre, base x points up and base y points left.

Everything is deterministic given the seed: the initial layout and the periodic scripted events
draw from one numpy Generator, and time advances only by the ``dt`` each step is given.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from aura_ros.core import arm

# The default arm (core/arm.py), so a command inside the policy's default range is reachable and
# nothing outside it is. Gripper: 0 = open .. 1 = closed.
JOINT_NAMES: tuple[str, ...] = arm.JOINT_NAMES
JOINT_LOWER = np.array(arm.LOW)
JOINT_UPPER = np.array(arm.HIGH)
# rad/s (gripper: stroke per second): a step change of command becomes a visible motion over a
# few ticks instead of a teleport, as on a real arm's position controller.
MAX_JOINT_VELOCITY = np.array([1.5, 1.5, 2.0, 2.0])
INITIAL_POSITIONS = (0.3, 0.9, 0.2, 0.0)
LINK_LENGTHS = (0.30, 0.25, 0.08)  # shoulder->elbow, elbow->wrist, wrist->gripper centre (m)
GRIPPER_CLOSED_AT = 0.5  # the gripper counts as closed from this position on (grasp / release edge)
GRASP_RADIUS = 0.06  # m: an object whose centre is this close to the gripper centre is grasped
MAX_LINEAR_SPEED = 0.5  # m/s, base
MAX_ANGULAR_SPEED = 1.5  # rad/s, base
VIEW_HALF_EXTENT = 0.75  # m from the image centre to the nearer image border (the arm reaches 0.63)
TABLE = ((-0.25, -0.75), (0.85, 0.75))  # world rectangle (x0, y0), (x1, y1): the base starts at its near edge
GRID_SPACING = 0.25  # m, floor/table lines fixed in the world: base motion shows even with no object in view
MAX_DT = 10.0  # s; a larger step is a caller's unit mistake (ms for s), refused

COLORS: dict[str, tuple[int, int, int]] = {  # RGB
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (235, 205, 40),
    "orange": (240, 130, 30), "purple": (140, 60, 190), "cyan": (40, 200, 210), "pink": (240, 120, 170),
}
SHAPES = ("box", "disc", "bin")  # a bin is drawn as an open square and cannot be grasped
EVENT_KINDS = ("appear", "recolor", "close_gripper", "open_gripper", "vanish")
# The order in which periodic events take turns: an object appears, another changes colour, the
# gripper is closed (grasping whatever is under it) and opened again, and an old object goes.
PERIODIC_CYCLE = EVENT_KINDS

_FLOOR = (70, 74, 82)
_FLOOR_LINE = (88, 92, 100)
_TABLE = (196, 170, 130)
_TABLE_LINE = (178, 152, 112)
_ARM = (60, 60, 66)
_JOINT = (130, 130, 140)
_FINGER = (30, 30, 34)
_SUBPIXEL_BITS = 4  # cv2 drawing with fractional coordinates: small motions still change pixels
# The cameras the scene renders: "top" looks down on the whole table; "wrist" rides on the gripper
# (centred on it, turned with its last link, magnified WRIST_ZOOM times), the close-up a wrist camera
# of an SO-101 or ALOHA arm gives beside the overview.
CAMERA_VIEWS = ("top", "wrist")
WRIST_ZOOM = 2.5


@dataclass
class SceneObject:
    """An object on the table (world position, metres)."""

    name: str
    color: str
    position: np.ndarray
    size: float = 0.07
    shape: str = "box"
    held: bool = False
    # While held: the object's position in the gripper frame (x along the last link).
    grasp_offset: np.ndarray = field(default_factory=lambda: np.zeros(2))


@dataclass(frozen=True)
class ScriptedEvent:
    """Something that happens in the scene at a step number or a scene time (exactly one).

    kind: "appear" (``target`` = name, ``color``, ``position`` world xy; random when None),
    "recolor" (``target``, ``color``; random when None), "vanish" (``target``; the oldest
    object when None), "close_gripper" / "open_gripper" (a scripted gripper command).
    """

    kind: str
    at_step: int | None = None
    at_time_s: float | None = None
    target: str | None = None
    color: str | None = None
    position: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; expected one of {EVENT_KINDS}")
        if (self.at_step is None) == (self.at_time_s is None):
            raise ValueError(f"event {self.kind!r} needs exactly one of at_step and at_time_s")
        if self.at_step is not None and self.at_step < 1:
            raise ValueError(f"event {self.kind!r}: at_step {self.at_step} must be >= 1 (steps count from 1)")
        if self.color is not None and self.color not in COLORS:
            raise ValueError(f"event {self.kind!r}: unknown colour {self.color!r}; expected one of {tuple(COLORS)}")


@dataclass(frozen=True)
class FiredEvent:
    """A record of an event that happened (scripted, periodic, or a grasp/release)."""

    step: int
    time_s: float
    kind: str
    detail: str


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(p[0]), int(p[1])


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


class SimScene:
    """The simulated robot and its table.

    Step it with ``step(dt, position_targets, base_velocity)`` (or the two ``apply_*_command``
    shorthands), read it with ``render()`` and ``joint_state()``.
    """

    def __init__(self, width: int = 96, height: int = 96, seed: int = 0, event_period_steps: int = 50,
                 events: Sequence[ScriptedEvent] = (), max_objects: int = 8) -> None:
        """width/height: image size in pixels; event_period_steps: a periodic scripted event every
        that many steps (0: none); events: extra scripted events; max_objects: an "appear" beyond
        it first removes the oldest object that is not held."""
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, (int, np.integer)) or not 16 <= value <= 8192:
                raise ValueError(f"{name} must be an integer in 16..8192, got {value!r}")
        if event_period_steps < 0:
            raise ValueError(f"event_period_steps must be >= 0, got {event_period_steps}")
        if max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {max_objects}")
        self.width, self.height = int(width), int(height)
        self.seed = int(seed)
        self.event_period_steps = int(event_period_steps)
        self.max_objects = int(max_objects)
        self._rng = np.random.default_rng(self.seed)
        self._positions = np.array(INITIAL_POSITIONS, dtype=np.float64)
        self._velocities = np.zeros(len(JOINT_NAMES))
        self._targets = self._positions.copy()
        self._base = np.zeros(3)  # world x, y, yaw
        self._objects: list[SceneObject] = []
        self._pending = sorted(events, key=lambda e: (e.at_step if e.at_step is not None else math.inf,
                                                      e.at_time_s if e.at_time_s is not None else -1.0))
        self.events_fired: list[FiredEvent] = []
        self.step_count = 0
        self.time_s = 0.0
        self._appeared = 0
        self._ppm = min(self.width, self.height) / (2.0 * VIEW_HALF_EXTENT)  # pixels per metre
        self._initial_layout()

    # ------------------------------------------------------------------ state

    def joint_state(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, positions, velocities): copies, in JOINT_NAMES order."""
        return list(JOINT_NAMES), self._positions.copy(), self._velocities.copy()

    @property
    def targets(self) -> np.ndarray:
        return self._targets.copy()

    @property
    def base_pose(self) -> tuple[float, float, float]:
        """World (x, y, yaw) of the base."""
        return float(self._base[0]), float(self._base[1]), float(self._base[2])

    @property
    def objects(self) -> list[SceneObject]:
        return list(self._objects)

    def get_object(self, name: str) -> SceneObject:
        for obj in self._objects:
            if obj.name == name:
                return obj
        raise KeyError(f"no object named {name!r}; objects: {[o.name for o in self._objects]}")

    @property
    def held_object(self) -> str | None:
        return next((o.name for o in self._objects if o.held), None)

    def gripper_pose(self) -> tuple[np.ndarray, float]:
        """World position of the gripper centre (between the fingers) and the last link's world angle."""
        points, angle = self._arm_points_base()
        return self._base_to_world(points[-1]), angle + float(self._base[2])

    # ------------------------------------------------------------------ commands

    def set_position_targets(self, targets: Sequence[float] | Mapping[str, float]) -> None:
        """New joint targets: all joints in JOINT_NAMES order, or a mapping name -> position for
        some of them. Values are clipped to the joint limits; NaN/inf or unknown names raise."""
        new = self._targets.copy()
        if isinstance(targets, Mapping):
            unknown = [n for n in targets if n not in JOINT_NAMES]
            if unknown:
                raise ValueError(f"unknown joint(s) {unknown}; the sim has {list(JOINT_NAMES)}")
            for name, value in targets.items():
                new[JOINT_NAMES.index(name)] = float(value)
        else:
            values = np.asarray(targets, dtype=np.float64).reshape(-1)
            if values.size != len(JOINT_NAMES):
                raise ValueError(f"expected {len(JOINT_NAMES)} positions ({', '.join(JOINT_NAMES)}), "
                                 f"got {values.size}")
            new = values.copy()
        if not np.all(np.isfinite(new)):
            raise ValueError(f"joint targets must be finite, got {new.tolist()}")
        self._targets = np.clip(new, JOINT_LOWER, JOINT_UPPER)

    def apply_position_command(self, targets: Sequence[float] | Mapping[str, float], dt: float) -> None:
        """Set joint targets and advance the scene by ``dt`` seconds (one tick)."""
        self.step(dt, position_targets=targets)

    def apply_velocity_command(self, linear_x: float, angular_z: float, dt: float) -> None:
        """Drive the base at (linear_x m/s, angular_z rad/s) for ``dt`` seconds (one tick)."""
        self.step(dt, base_velocity=(linear_x, angular_z))

    def step(self, dt: float, position_targets: Sequence[float] | Mapping[str, float] | None = None,
             base_velocity: tuple[float, float] | None = None) -> list[FiredEvent]:
        """Advance one tick of ``dt`` seconds and return the events it fired.

        Order within a tick: the command's targets are set, due scripted events fire (so a
        scripted gripper close overrides this tick's gripper command), the joints move toward
        their targets at most MAX_JOINT_VELOCITY * dt, the base moves at the (clipped) velocity
        (None: standing still), then grasp/release happens on the gripper's closing/opening
        edge and a held object follows the gripper.
        """
        dt = float(dt)
        if not (math.isfinite(dt) and 0.0 < dt <= MAX_DT):
            raise ValueError(f"dt must be in (0, {MAX_DT}] seconds, got {dt}")
        if base_velocity is not None:
            v, w = (float(x) for x in base_velocity)
            if not (math.isfinite(v) and math.isfinite(w)):
                raise ValueError(f"base velocity must be finite, got {base_velocity}")
        if position_targets is not None:
            self.set_position_targets(position_targets)
        n_before = len(self.events_fired)
        self.step_count += 1
        self.time_s += dt
        self._fire_due_events()

        was_closed = self._positions[3] >= GRIPPER_CLOSED_AT
        delta = np.clip(self._targets - self._positions, -MAX_JOINT_VELOCITY * dt, MAX_JOINT_VELOCITY * dt)
        self._positions = self._positions + delta
        self._velocities = delta / dt
        if base_velocity is not None:
            v = float(np.clip(v, -MAX_LINEAR_SPEED, MAX_LINEAR_SPEED))
            w = float(np.clip(w, -MAX_ANGULAR_SPEED, MAX_ANGULAR_SPEED))
            heading = self._base[2] + 0.5 * w * dt  # mid-point heading: exact enough for small dt
            self._base = self._base + np.array([v * dt * math.cos(heading), v * dt * math.sin(heading), w * dt])
            self._base[2] = math.remainder(self._base[2], 2 * math.pi)
        is_closed = self._positions[3] >= GRIPPER_CLOSED_AT
        if is_closed and not was_closed:
            self._try_grasp()
        elif was_closed and not is_closed:
            self._release()
        self._move_held()
        return self.events_fired[n_before:]

    # ------------------------------------------------------------------ objects and events

    def add_object(self, name: str, color: str, position: Sequence[float], size: float = 0.07,
                   shape: str = "box") -> SceneObject:
        if any(o.name == name for o in self._objects):
            raise ValueError(f"an object named {name!r} exists already")
        if color not in COLORS:
            raise ValueError(f"unknown colour {color!r}; expected one of {tuple(COLORS)}")
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
        xy = np.asarray(position, dtype=np.float64).reshape(-1)
        if xy.size != 2 or not np.all(np.isfinite(xy)) or not 0 < size < 1:
            raise ValueError(f"object {name!r}: position must be 2 finite numbers and size in (0, 1) m")
        obj = SceneObject(name=name, color=color, position=xy.copy(), size=float(size), shape=shape)
        self._objects.append(obj)
        return obj

    def remove_object(self, name: str) -> None:
        self._objects.remove(self.get_object(name))

    def set_color(self, name: str, color: str) -> None:
        if color not in COLORS:
            raise ValueError(f"unknown colour {color!r}; expected one of {tuple(COLORS)}")
        self.get_object(name).color = color

    def _initial_layout(self) -> None:
        # The task of the demo: "pick up the red block and put it in the bin".
        for name, color, shape, size in (("bin", "purple", "bin", 0.13), ("red_block", "red", "box", 0.07),
                                         ("green_block", "green", "box", 0.07), ("blue_disc", "blue", "disc", 0.07)):
            self.add_object(name, color, self._free_spot(), size=size, shape=shape)

    def _free_spot(self) -> np.ndarray:
        """A random world point within the arm's reach in front of the base, clear of other objects."""
        best, best_gap = None, -1.0
        for _ in range(50):
            r = self._rng.uniform(0.25, 0.55)
            a = self._rng.uniform(-1.2, 1.2)
            xy = self._base_to_world(np.array([r * math.cos(a), r * math.sin(a)]))
            gap = min((float(np.linalg.norm(xy - o.position)) for o in self._objects), default=math.inf)
            if gap >= 0.15:
                return xy
            if gap > best_gap:
                best, best_gap = xy, gap
        return best

    def _fire_due_events(self) -> None:
        for event in [e for e in self._pending if self._due(e)]:  # _pending is in schedule order
            self._pending.remove(event)
            self._fire(event)
        if self.event_period_steps and self.step_count % self.event_period_steps == 0:
            k = self.step_count // self.event_period_steps - 1
            self._fire(ScriptedEvent(PERIODIC_CYCLE[k % len(PERIODIC_CYCLE)], at_step=self.step_count))

    def _due(self, event: ScriptedEvent) -> bool:
        if event.at_step is not None:
            return event.at_step <= self.step_count
        return event.at_time_s <= self.time_s + 1e-9

    def _fire(self, event: ScriptedEvent) -> None:
        kind = event.kind
        if kind == "appear":
            while len(self._objects) >= self.max_objects:
                oldest = next((o for o in self._objects if not o.held and o.shape != "bin"), None)
                if oldest is None:
                    return self._record(kind, "skipped: the scene is full")
                self._objects.remove(oldest)
                self._record("vanish", f"{oldest.name} (to make room)")
            self._appeared += 1
            name = event.target or f"object_{self._appeared}"
            color = event.color or str(self._rng.choice(list(COLORS)))
            position = event.position if event.position is not None else self._free_spot()
            shape = "disc" if self._rng.random() < 0.5 else "box"
            if any(o.name == name for o in self._objects):
                return self._record(kind, f"skipped: {name} exists already")
            self.add_object(name, color, position, shape=shape)
            return self._record(kind, f"{color} {shape} {name} at ({position[0]:.2f}, {position[1]:.2f})")
        if kind == "recolor":
            candidates = [o for o in self._objects if o.shape != "bin"]
            if event.target is not None:
                candidates = [o for o in candidates if o.name == event.target]
            if not candidates:
                return self._record(kind, f"skipped: no object {event.target or ''}".rstrip())
            obj = candidates[int(self._rng.integers(len(candidates)))] if event.target is None else candidates[0]
            color = event.color or str(self._rng.choice([c for c in COLORS if c != obj.color]))
            old, obj.color = obj.color, color
            return self._record(kind, f"{obj.name} {old} -> {color}")
        if kind == "vanish":
            candidates = [o for o in self._objects if not o.held and o.shape != "bin"]
            if event.target is not None:
                candidates = [o for o in candidates if o.name == event.target]
            if not candidates:
                return self._record(kind, f"skipped: no object to remove {event.target or ''}".rstrip())
            self._objects.remove(candidates[0])
            return self._record(kind, candidates[0].name)
        # A scripted gripper command: it replaces the gripper target; the arm joints keep theirs.
        self._targets[3] = JOINT_UPPER[3] if kind == "close_gripper" else JOINT_LOWER[3]
        return self._record(kind, "gripper target set to closed" if kind == "close_gripper" else
                            "gripper target set to open")

    def _record(self, kind: str, detail: str) -> None:
        self.events_fired.append(FiredEvent(self.step_count, self.time_s, kind, detail))

    def _try_grasp(self) -> None:
        centre, angle = self.gripper_pose()
        reachable = [(float(np.linalg.norm(o.position - centre)), i) for i, o in enumerate(self._objects)
                     if o.shape != "bin" and not o.held]
        reachable = [(d, i) for d, i in reachable if d <= GRASP_RADIUS]
        if not reachable:
            return
        obj = self._objects[min(reachable)[1]]
        obj.held = True
        obj.grasp_offset = _rot(-angle) @ (obj.position - centre)
        self._record("grasp", obj.name)

    def _release(self) -> None:
        for obj in self._objects:
            if obj.held:
                obj.held = False
                self._record("release", f"{obj.name} at ({obj.position[0]:.2f}, {obj.position[1]:.2f})")

    def _move_held(self) -> None:
        held = [o for o in self._objects if o.held]
        if held:
            centre, angle = self.gripper_pose()
            for obj in held:
                obj.position = centre + _rot(angle) @ obj.grasp_offset

    # ------------------------------------------------------------------ geometry and drawing

    def _arm_points_base(self) -> tuple[list[np.ndarray], float]:
        """Shoulder, elbow, wrist and gripper centre in the base frame; the last link's angle."""
        points = [np.zeros(2)]
        angle = 0.0
        for q, length in zip(self._positions[:3], LINK_LENGTHS):
            angle += float(q)
            points.append(points[-1] + length * np.array([math.cos(angle), math.sin(angle)]))
        return points, angle

    def _base_to_world(self, p: np.ndarray) -> np.ndarray:
        return self._base[:2] + _rot(self._base[2]) @ p

    def _world_to_px(self, pts: np.ndarray) -> np.ndarray:
        """World points (..., 2) -> fixed-point pixel coordinates (..., 2) for cv2 with shift bits."""
        base = (np.asarray(pts, dtype=np.float64) - self._base[:2]) @ _rot(self._base[2])  # R^T (p - b)
        return self._base_px(base)

    def _base_px(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64)
        u = self.width / 2.0 - pts[..., 1] * self._ppm
        v = self.height / 2.0 - pts[..., 0] * self._ppm
        return np.rint(np.stack([u, v], axis=-1) * (1 << _SUBPIXEL_BITS)).astype(np.int32)

    def _px_len(self, metres: float) -> int:
        return max(1, int(round(metres * self._ppm)))

    def render(self) -> np.ndarray:
        """The camera frame: (height, width, 3) uint8 RGB, drawn fresh from the current state."""
        img = np.empty((self.height, self.width, 3), dtype=np.uint8)
        img[:] = _FLOOR
        sb, aa = _SUBPIXEL_BITS, cv2.LINE_AA
        (x0, y0), (x1, y1) = TABLE
        table = self._world_to_px(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
        # Floor lines over the whole visible area (a square around the base that covers the
        # image's corners at any yaw), then the table and its own lines on top.
        reach = VIEW_HALF_EXTENT * max(self.width, self.height) / min(self.width, self.height) * 1.5
        bx, by = self._base[:2]
        self._draw_grid(img, (bx - reach, bx + reach), (by - reach, by + reach), _FLOOR_LINE)
        cv2.fillPoly(img, [table], _TABLE, aa, sb)
        self._draw_grid(img, (x0, x1), (y0, y1), _TABLE_LINE)
        for obj in self._objects:
            if not obj.held:
                self._draw_object(img, obj)
        points, angle = self._arm_points_base()
        px = [self._base_px(p) for p in points]
        cv2.circle(img, _pt(px[0]), self._px_len(0.05) << sb, _JOINT, -1, aa, sb)
        for a, b, width in ((px[0], px[1], 0.04), (px[1], px[2], 0.035), (px[2], px[3], 0.025)):
            cv2.line(img, _pt(a), _pt(b), _ARM, self._px_len(width), aa, sb)
        for p in px[1:3]:
            cv2.circle(img, _pt(p), self._px_len(0.022) << sb, _JOINT, -1, aa, sb)
        for obj in self._objects:
            if obj.held:
                self._draw_object(img, obj)
        # Two fingers either side of the gripper centre; their gap shows the gripper position.
        direction = np.array([math.cos(angle), math.sin(angle)])
        side = np.array([-direction[1], direction[0]])
        half_gap = 0.045 * (1.0 - self._positions[3]) + 0.012
        palm = [self._base_px(points[3] + sign * half_gap * side - 0.02 * direction) for sign in (-1.0, 1.0)]
        cv2.line(img, _pt(palm[0]), _pt(palm[1]), _FINGER, self._px_len(0.016), aa, sb)
        for sign in (-1.0, 1.0):
            root = points[3] + sign * half_gap * side
            a, b = self._base_px(root - 0.02 * direction), self._base_px(root + 0.03 * direction)
            cv2.line(img, _pt(a), _pt(b), _FINGER, self._px_len(0.016), aa, sb)
        return img

    def render_view(self, view: str = "top") -> np.ndarray:
        """One camera's frame (CAMERA_VIEWS): (height, width, 3) uint8 RGB."""
        if view == "top":
            return self.render()
        if view != "wrist":
            raise ValueError(f"unknown camera view {view!r}; choose one of {CAMERA_VIEWS}")
        points, angle = self._arm_points_base()
        centre = self._base_px(points[3]) / float(1 << _SUBPIXEL_BITS)
        # The last link's direction in pixels (base x is image up, base y image left), turned to
        # point up in the wrist frame: R d = (0, -1) for the rotation R = [[-dy, dx], [-dx, -dy]].
        dx, dy = -math.sin(angle), -math.cos(angle)
        rot = WRIST_ZOOM * np.array([[-dy, dx], [-dx, -dy]])
        shift = np.array([self.width / 2.0, self.height / 2.0]) - rot @ centre
        warp = np.hstack([rot, shift[:, None]])
        return cv2.warpAffine(self.render(), warp, (self.width, self.height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=_FLOOR)

    def _draw_grid(self, img: np.ndarray, x_range: tuple[float, float], y_range: tuple[float, float],
                   color: tuple[int, int, int]) -> None:
        """World-fixed lines every GRID_SPACING inside a world rectangle."""
        for axis, (lo, hi), (span_lo, span_hi) in ((0, x_range, y_range), (1, y_range, x_range)):
            for k in range(math.ceil(lo / GRID_SPACING), math.floor(hi / GRID_SPACING) + 1):
                c = k * GRID_SPACING
                ends = [[c, span_lo], [c, span_hi]] if axis == 0 else [[span_lo, c], [span_hi, c]]
                a, b = self._world_to_px(np.array(ends))
                cv2.line(img, _pt(a), _pt(b), color, 1, cv2.LINE_AA, _SUBPIXEL_BITS)

    def _draw_object(self, img: np.ndarray, obj: SceneObject) -> None:
        color = COLORS[obj.color]
        sb, aa = _SUBPIXEL_BITS, cv2.LINE_AA
        if obj.shape == "disc":
            radius = max(1 << sb, int(round(obj.size / 2 * self._ppm * (1 << sb))))
            cv2.circle(img, _pt(self._world_to_px(obj.position)), radius, color, -1, aa, sb)
            return
        h = obj.size / 2
        corners = obj.position + np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
        px = self._world_to_px(corners)
        if obj.shape == "bin":
            cv2.polylines(img, [px], True, color, self._px_len(0.015), aa, sb)
        else:
            cv2.fillPoly(img, [px], color, aa, sb)
