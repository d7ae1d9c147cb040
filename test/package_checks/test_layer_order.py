"""The layers of DESIGN.md, checked on the import graph (deferred imports counted): every import
goes down or sideways within a layer, and a backend imports no other backend. A cycle test alone
lets ros/ import a backend or memory/ import core, as long as nothing imports back."""
from __future__ import annotations

import pytest
from test_import_cycles import graph

# Folder of aura_ros -> layer, lowest first. sim/ (the simulated arm: numpy and core's arm facts)
# sits beside core, and so does data/ (users' recordings read into the sim's episode records, no ROS:
# a training machine reads bags without the ROS wheels); tools/ and bench/ are one layer (the tools
# run the benchmarks).
LAYERS = {"memory": 0, "core": 1, "sim": 1, "data": 1, "backends": 2, "ros": 3, "tools": 4, "bench": 4}

# The package root (``import aura_ros`` for its version, the generated msg/srv) is below everything.
ROOT_LAYER = -1
# Folders above the backends that reach a model only through the seam (core.protocol and
# core.registry), never a backend module: the node is wiring only (DESIGN.md, layer 5).
SEAM_ONLY = {"ros"}


def layer(module: str) -> tuple[int, str]:
    """(layer, backend name or "") of a module of aura_ros."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] not in LAYERS:
        if len(parts) > 1 and parts[1] not in ("msg", "srv"):
            raise KeyError(f"{module}: folder {parts[1]!r} has no layer; add it to LAYERS")
        return ROOT_LAYER, ""
    backend = parts[2] if parts[1] == "backends" and len(parts) > 2 else ""
    return LAYERS[parts[1]], backend


def violations(edges: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer, or from one backend into another."""
    found = []
    for importer, imported in sorted((a, b) for a, targets in edges.items() for b in targets):
        (la, ba), (lb, bb) = layer(importer), layer(imported)
        if lb > la:
            found.append(f"{importer} -> {imported} (layer {la} imports layer {lb})")
        elif ba and bb and ba != bb:
            found.append(f"{importer} -> {imported} (a backend imports another backend)")
        elif bb and importer.split(".")[1] in SEAM_ONLY:
            found.append(f"{importer} -> {imported} ({importer.split('.')[1]}/ imports no backend)")
    return found


def test_every_import_goes_down_or_sideways():
    bad = violations(graph())
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("importer, imported", [
    ("aura_ros.memory.store", "aura_ros.core.registry"),  # memory is below core
    ("aura_ros.core.registry", "aura_ros.backends.llama_cpp.policy"),  # eager or deferred: still up
    ("aura_ros.ros.policy_node", "aura_ros.backends.transformers.policy"),  # the node names no backend
    ("aura_ros.ros.policy_node", "aura_ros.tools.cli"),
    ("aura_ros.backends.llama_cpp.policy", "aura_ros.backends.transformers.smollm"),  # backend to backend
])
def test_a_real_violation_is_caught(importer, imported):
    edges = {importer: {imported}, imported: set()}
    assert violations(edges), f"{importer} -> {imported} passed"


@pytest.mark.parametrize("importer, imported", [
    ("aura_ros.backends.llama_cpp.kvstore", "aura_ros.memory.store"),  # down
    ("aura_ros.core.registry", "aura_ros.core.config"),  # sideways
    ("aura_ros.bench.memory", "aura_ros.tools.harness"),  # sideways: one layer
    ("aura_ros.tools.cli", "aura_ros.backends.llama_cpp.policy"),  # tools may name a backend
])
def test_allowed_imports_pass(importer, imported):
    assert violations({importer: {imported}, imported: set()}) == []


def test_every_folder_has_a_layer():
    for module in graph():
        layer(module)  # KeyError names a new folder that DESIGN.md's layers do not place yet
