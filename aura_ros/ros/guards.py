"""Input guards as pure functions: what the node accepts, drops or clips, tested without DDS.

Every function returns either the value to use or a ``Drop`` with the reason; the node counts
and logs drops (throttled), so nothing is lost silently.
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

import numpy as np

# Reasons list at most this many names, so a message with 10^5 joints cannot make a 1 MB log line.
MAX_NAMES_IN_REASON = 5


@dataclass(frozen=True)
class Drop:
    reason: str


def name_list(names, limit: int = MAX_NAMES_IN_REASON) -> str:
    names = list(names)
    shown = ", ".join(repr(str(n)[:64]) for n in names[:limit])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > limit else ''}]"


@dataclass(frozen=True)
class JointState:
    """A joint state the policy can use: positions in the policy's joint order."""

    names: tuple[str, ...]
    positions: np.ndarray
    stamp: float  # seconds; 0.0 for an unstamped message
    clipped: int  # values that were outside the limits and were clipped


def check_joint_state(names, positions, stamp: float, wanted: list[str], low: np.ndarray | None,
                      high: np.ndarray | None, state_limit: float) -> JointState | Drop:
    """Validate one sensor_msgs/JointState's names/positions/stamp against the joints we need.

    Extra joints are ignored (robots publish more joints than a policy uses). Values are clipped
    to [low, high] (the action limits, for joints the policy commands) or to +-state_limit, so
    the state text has a bounded length whatever a driver sends.
    """
    names = list(names)
    positions = np.asarray(positions, dtype=np.float64).reshape(-1)
    if len(names) != positions.size:
        return Drop(f"{len(names)} names but {positions.size} positions")
    if not math.isfinite(stamp) or stamp < 0:
        return Drop(f"invalid stamp {stamp}")
    if len(set(names)) != len(names):
        return Drop("duplicate joint names")
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in wanted if n not in index]
    if missing:
        return Drop(f"missing joints {name_list(missing)}")
    picked = positions[[index[n] for n in wanted]]
    if not np.all(np.isfinite(picked)):
        return Drop("NaN or infinite position")
    lo = np.full(picked.size, -state_limit) if low is None else np.asarray(low, dtype=np.float64)
    hi = np.full(picked.size, state_limit) if high is None else np.asarray(high, dtype=np.float64)
    clipped = np.clip(picked, lo, hi)
    return JointState(tuple(wanted), clipped, float(stamp), int(np.count_nonzero(clipped != picked)))


@dataclass
class StampOrder:
    """Refuses joint states whose stamps go backwards, judged against the node clock.

    - a stamp more than ``tolerance`` ahead of the node clock is dropped (it would otherwise
      lock out every later, correct message);
    - a stamp at most ``tolerance`` older than the newest accepted one is accepted (two
      publishers with close stamps must not drop each other);
    - an unstamped message (0) is accepted and ordered by arrival;
    - stamps that stay behind, moving forward among themselves, for ``restart_after`` seconds of
      the node clock with no message of the old order in between are a publisher's clock that was
      reset (a driver restarted, a clock stepped back by hours): the order restarts from them
      (``restarts`` counts it), where it used to hold until someone called ~/reset_memory. A lone
      old message beside a good publisher never restarts it: each good one ends the watch.
    """

    tolerance: float = 0.5
    newest: float = 0.0
    restart_after: float = 2.0
    restarts: int = 0
    _behind_since: float | None = None  # node time of the first message of a run behind the order
    _behind_newest: float = 0.0

    def check(self, stamp: float, now: float) -> Drop | None:
        if stamp == 0.0:
            return None
        if now > 0 and stamp > now + self.tolerance:
            return Drop(f"stamp {stamp:.3f} s is {stamp - now:.3f} s ahead of the node clock")
        if stamp < self.newest - self.tolerance:
            if self._behind_since is None or stamp < self._behind_newest - self.tolerance:
                # A new run behind the order (or one that went back again)
                self._behind_since, self._behind_newest = now, stamp
            elif now - self._behind_since >= self.restart_after:
                back = self.newest - stamp
                self.newest, self._behind_since = stamp, None
                self.restarts += 1
                return Restarted(f"joint-state stamps stayed {back:.3f} s behind for {self.restart_after:g} s "
                                 "(a publisher's clock was reset): the order restarts from them")
            else:
                self._behind_newest = max(self._behind_newest, stamp)
            return Drop(f"stamp went backwards ({stamp:.3f} s < {self.newest:.3f} s)")
        self._behind_since = None
        self.newest = max(self.newest, stamp)
        return None

    def reset(self) -> None:
        self.newest = 0.0
        self._behind_since = None


@dataclass(frozen=True)
class Restarted:
    """StampOrder accepted a message by restarting its order; the reason says why (log it)."""

    reason: str


def widest_states(low, high, decimals: int = 2, samples: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Joint states whose text is the longest the policy can be shown (values are clipped to
    [low, high] first, see check_joint_state): both limits, per joint the limit with more
    characters, and a few seeded draws in between (a tokenizer may split some digits more).
    The node counts the largest of their steps in every budget check."""
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)

    def width(v: float) -> int:
        return len(f"{v:.{decimals}f}")
    wide = np.array([a if width(a) >= width(b) else b for a, b in zip(lo, hi)])
    rng = np.random.default_rng(seed)
    return [lo, hi, wide, *(rng.uniform(lo, hi) for _ in range(samples))]


def stale_inputs(now: float, image_time: float, state_time: float, image_timeout: float,
                 state_timeout: float, has_state: bool) -> list[str]:
    """Which inputs are too old to act on (times are monotonic receive times)."""
    stale = []
    if now - image_time > image_timeout:
        stale.append("image")
    if not has_state or now - state_time > state_timeout:
        stale.append("joint_states")
    return stale


def clean_instruction(text: str, max_chars: int) -> tuple[str, bool] | Drop:
    """(text, truncated) or a Drop for an instruction with nothing visible in it: empty, white
    space, or only zero-width and other format or control characters (U+200B, U+FEFF, ...)."""
    text = text.strip()
    if not text:
        return Drop("empty instruction")
    if not any(unicodedata.category(c)[0] not in "CZ" for c in text):
        return Drop(f"instruction of {len(text)} invisible characters only (zero-width, format or control)")
    if len(text) > max_chars:
        return text[:max_chars], True
    return text, False


def hold_positions(state: np.ndarray | None, state_names, joint_names, low, high) -> np.ndarray | None:
    """The arm's hold command: the current positions clipped to the limits; None if unknown."""
    if state is None or tuple(state_names) != tuple(joint_names):
        return None
    return np.clip(np.asarray(state, dtype=np.float64), np.asarray(low), np.asarray(high))


@dataclass
class RepeatFilter:
    """True for a message that repeats the previous one within ``window`` seconds.

    The instruction arrives through two subscriptions (transient local and volatile, see qos.py):
    a latched publisher's message reaches both, and must count once.
    """

    window: float = 1.0
    _last: tuple[str, float] | None = None

    def repeat(self, text: str, now: float) -> bool:
        last, self._last = self._last, (text, now)
        return last is not None and last[0] == text and now - last[1] <= self.window

    def forget(self) -> None:
        """The instruction changed another way (the parameter): the next message, even the text of
        the previous one, is a new command."""
        self._last = None
