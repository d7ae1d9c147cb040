"""The MLX backend: the transformers backend's Llava folders (SigLIP tower + Llama decoder) run on
MLX (mlx-lm's Llama for the decoder), on a fixed-slot MLX KV store with re-rotation.

Opt-in: ``make mlx`` (``pip install "mlx[cpu]" mlx-lm`` on Linux, plain ``mlx`` on macOS). Nothing
here is imported unless the backend is chosen (``model.backend: mlx``).
"""

# What the registry reads (core.registry): the opt-in runtime, and no loading options (this
# backend runs float32 on MLX's default device; the node's dtype/device are transformers').
# SMALL_BUDGET_BYTES: the registry's default (128 tokens of the embedded default) applies.
REQUIRES = ("mlx", "mlx_lm")
OPTIONS: dict[str, str] = {}

# The memory policies this backend cannot run, and why (tools report them as skipped, not dropped).
REFUSES = {
    "unbounded": "the MLX backend runs a fixed-slot store (no unbounded reference)",
    "h2o": "H2O scores by attention weights, which mx.fast.scaled_dot_product_attention does not expose",
}


def refuses(policy: str, options: dict | None = None) -> str | None:
    """Why this backend cannot run ``policy`` (None: it can)."""
    return REFUSES.get(policy)


# Serving several robots from one process (``aura-ros serve``): what happens to the model.
SERVING = "each robot loads its own model (the MLX policy owns its weights; sharing them is not built)"
