"""aura_ros's message definitions (msg/*.msg) as data: where the files are and their fields.

The Foxglove JSON channels, the layout test and bag replay (which registers the types with
rosbags) all read the fields from the .msg files, so a field added there shows up everywhere
under the same name that the node publishes.
"""
from __future__ import annotations

import sys
from pathlib import Path

MSG_NAMES = ("MemoryBudget", "GateStats")


def msg_dir() -> Path:
    """Where aura_ros's .msg files are: the source tree, or the installed share/aura_ros/msg."""
    candidates = [Path(__file__).resolve().parents[2] / "msg", Path(sys.prefix) / "share" / "aura_ros" / "msg"]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("aura_ros")) / "msg")
    except Exception:  # no ament index (not a colcon install): the other places
        pass
    for c in candidates:
        if all((c / f"{n}.msg").is_file() for n in MSG_NAMES):
            return c
    raise FileNotFoundError(f"MemoryBudget.msg / GateStats.msg not found in {[str(c) for c in candidates]}")


def msg_text(name: str) -> str:
    return (msg_dir() / f"{name}.msg").read_text()


def msg_fields(name: str) -> list[tuple[str, str]]:
    """(type, name) of each field of msg/<name>.msg after the header, in order."""
    out = []
    for line in msg_text(name).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            typ, field = line.split()[:2]
            if typ != "std_msgs/Header":
                out.append((typ, field))
    return out


def _json_type(typ: str) -> str:
    if typ == "bool":
        return "boolean"
    if typ.startswith(("float", "double")):
        return "number"
    if typ.startswith(("int", "uint")):
        return "integer"
    return "string"


def json_schema(name: str) -> dict:
    """A JSON schema with the .msg's fields (and a ROS-style header), for a Foxglove JSON channel."""
    time = {"type": "object", "properties": {"sec": {"type": "integer"}, "nanosec": {"type": "integer"}}}
    props = {"header": {"type": "object", "properties": {"stamp": time, "frame_id": {"type": "string"}}}}
    props.update({f: {"type": _json_type(t)} for t, f in msg_fields(name)})
    return {"title": f"aura_ros/msg/{name}", "type": "object", "properties": props}


def stats_fields(name: str, stats) -> dict:
    """The .msg's fields read from a StepStats (the same names), typed for JSON."""
    out = {}
    for typ, field in msg_fields(name):
        value = getattr(stats, field)
        kind = _json_type(typ)
        out[field] = bool(value) if kind == "boolean" else float(value) if kind == "number" else int(value)
    return out
