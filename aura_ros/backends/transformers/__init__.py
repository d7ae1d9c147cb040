"""The transformers backend: a VLM from transformers stepped through a fixed-slot KV cache.

- cache: GatedKVCache, a transformers Cache of fixed size that executes the memory plan
- rope: re-rotation of moved keys so positions stay contiguous
- attention: an eager attention function that feeds H2O-style scores to the cache
- unbounded: DynamicCache behind the same episode API (the reference the benchmarks compare to)
- snapshot: the cache's state to and from files
- policy: VLMPolicy, the step loop behind the Policy protocol
- loading, processors, smollm, tiny_models: models, processors and the embedded defaults
"""
