"""The llama.cpp backend: GGUF models on llama-cpp-python's low-level API, the same memory plan.

Opt-in (it compiles llama.cpp): ``make llama`` or ``pip install aura_ros[llama]``. Nothing here is
imported unless the backend is chosen (``model.backend: llama_cpp`` or a ``.gguf`` model path).
"""
