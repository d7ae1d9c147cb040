"""The memory layer, backend-neutral (numpy only: no torch, no ROS).

- budget: bytes -> tokens from a model config (KVLayout)
- segments: the segment table (what each cached token belongs to)
- gate: the action gate (a training-free write gate on long-term memory)
- scorers: eviction scorers and policies (action gate, sliding window, StreamingLLM, H2O)
- planner: which segments stay and where they move (a plan each backend's KV store executes)
- stats: the statistics every backend reports
- store: MemoryStore, the bookkeeping every backend's KV store shares over its storage surface
- snapshot: the snapshot format every backend shares (files, validation, refusals)
"""
from aura_ros.memory.budget import MIB, BudgetError, KVLayout
from aura_ros.memory.gate import ActionGate, GateConfig, GateDecision
from aura_ros.memory.scorers import (
                                     POLICIES,
                                     EvictionPolicy,
                                     UtilityWeights,
                                     action_gated,
                                     h2o,
                                     make_policy,
                                     sliding_window,
                                     streaming_llm,
)
from aura_ros.memory.segments import Kind, Segment, SegmentTable
from aura_ros.memory.stats import MemoryStats, StepStats

__all__ = [
    "MIB", "BudgetError", "KVLayout", "ActionGate", "GateConfig", "GateDecision", "POLICIES", "EvictionPolicy",
    "UtilityWeights", "action_gated", "h2o", "make_policy", "sliding_window", "streaming_llm", "Kind", "Segment",
    "SegmentTable", "MemoryStats", "StepStats",
]
