"""The llama.cpp backend: GGUF models on llama-cpp-python's low-level API, the same memory plan.

Opt-in (it compiles llama.cpp): ``make llama`` or ``pip install aura_ros[llama]``. Nothing here is
imported unless the backend is chosen (``model.backend: llama_cpp`` or a ``.gguf`` model path).
"""

# The memory policies this backend cannot run, and why (tools report them as skipped, not dropped).
REFUSES = {
    "unbounded": "the llama.cpp backend runs a fixed context (no unbounded reference)",
    "h2o": "H2O scores by attention weights, which llama.cpp does not expose",
}
NO_FRAMES = "without a projector (--mmproj) the llama.cpp policy has no frame embedding for the novelty term"


def refuses(policy: str, options: dict | None) -> str | None:
    """Why this backend cannot run ``policy`` with these loading options (None: it can)."""
    if policy == "action_gate_novelty" and not (options or {}).get("mmproj"):
        return NO_FRAMES
    return REFUSES.get(policy)
