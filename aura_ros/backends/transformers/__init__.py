"""The transformers backend: a VLM from transformers stepped through a fixed-slot KV cache.

- cache: GatedKVCache, a transformers Cache of fixed size that executes the memory plan
- rope: re-rotation of moved keys so positions stay contiguous
- attention: an eager attention function that feeds H2O-style scores to the cache
- unbounded: DynamicCache behind the same episode API (the reference the benchmarks compare to)
- snapshot: the cache's state to and from files
- policy: VLMPolicy, the step loop behind the Policy protocol
- loading, processors, smollm, tiny_models: models, processors and the embedded defaults
"""

# What the registry reads (core.registry): the loading options this backend takes (option name ->
# make_policy keyword). ``torch_threads`` is the node's: a tool sets torch's threads itself.
OPTIONS = {"dtype": "dtype", "device": "device", "trust_remote_code": "trust_remote_code",
           "torch_threads": "n_threads"}
# The memory policies this backend cannot run: none (every one in memory.POLICIES).
REFUSES: dict[str, str] = {}

# Serving several robots from one process (``aura-ros serve``): what happens to the model.
SERVING = ("one loaded model (nn.Module) shared by every robot that asks for the same model, dtype and device; "
           "each robot has its own processor, KV cache, budget and gate, and steps on its own thread")


def share_models() -> None:
    """Turn on the process-wide sharing of loaded models (loading.share_loaded_models)."""
    from aura_ros.backends.transformers.loading import share_loaded_models

    share_loaded_models()


def shared_models() -> list[dict]:
    """The models loaded while sharing: {"path", "loads", "users"} each; nothing is imported to say so."""
    import sys

    loading = sys.modules.get("aura_ros.backends.transformers.loading")
    return [] if loading is None else [vars(m) for m in loading.shared_models()]
