"""The llama.cpp backend: GGUF models on llama-cpp-python's low-level API, the same memory plan.

Opt-in (it compiles llama.cpp): ``make llama`` or ``pip install aura_ros[llama]``. Nothing here is
imported unless the backend is chosen (``model.backend: llama_cpp`` or a ``.gguf`` model path).
"""

# What the registry reads (core.registry): the loading options this backend takes (option name ->
# make_policy keyword), the model files it claims under ``backend: auto``, and a budget at which
# its embedded default (SmolLM2-135M Q4_1, f16 KV: 23,040 bytes a token) holds 512 tokens, about
# 15 of its text steps (llama.cpp contexts come in 256-token units).
REQUIRES = ("llama_cpp",)  # the opt-in runtime (``make llama``)
OPTIONS = {"mmproj": "mmproj", "kv_type": "kv_type", "threads": "n_threads"}
MODEL_SUFFIXES = (".gguf",)
SMALL_BUDGET_BYTES = 512 * 23040

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


# Serving several robots from one process (``aura-ros serve``): what happens to the model.
SERVING = ("each robot loads its own model: a llama.cpp context is created from its own llama_model here; "
           "several contexts on one llama_model would share the weights, not built")
