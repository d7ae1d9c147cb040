"""The action-gated KV cache (layer 1: pure torch + transformers, no ROS).

- budget: bytes -> tokens from the model config (KVLayout)
- segments: the segment table (what each cached token belongs to)
- gate: the action gate (a training-free write gate on long-term memory)
- scorers: eviction scorers and policies (action gate, sliding window, StreamingLLM, H2O)
- rope: re-rotation of kept keys so positions stay contiguous
- cache: GatedKVCache, a transformers Cache of fixed size
- attention: an eager attention function that feeds H2O-style scores to the cache
"""
from aura_ros.memory.budget import MIB, BudgetError, KVLayout
from aura_ros.memory.cache import CacheFullError, GatedKVCache, MemoryStats
from aura_ros.memory.gate import ActionGate, GateConfig, GateDecision
from aura_ros.memory.rope import RopeRotator
from aura_ros.memory.scorers import (EvictionPolicy, UtilityWeights, action_gated, h2o, make_policy,
                                     sliding_window, streaming_llm)
from aura_ros.memory.segments import Kind, Segment, SegmentTable

__all__ = [
    "MIB", "BudgetError", "KVLayout", "CacheFullError", "GatedKVCache", "MemoryStats", "ActionGate",
    "GateConfig", "GateDecision", "RopeRotator", "EvictionPolicy", "UtilityWeights", "action_gated", "h2o",
    "make_policy", "sliding_window", "streaming_llm", "Kind", "Segment", "SegmentTable",
]
