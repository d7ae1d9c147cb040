"""LlamaKVStore: the backend-neutral memory plan executed on llama.cpp's own KV cache.

llama.cpp keeps one sequence's cells by position, not by slot: evicting a segment is
``llama_memory_seq_rm(mem, seq, pos_start, pos_start + pos_span)``, and closing the gap is
``llama_memory_seq_add(mem, seq, p0, p1, delta)`` on every kept segment that moves down (llama.cpp
re-rotates the shifted keys itself, lazily, at the next ``llama_decode``; a quantized K is
dequantized, rotated and requantized). The planner (``aura_ros.memory.planner``) decides which
segments go and where the kept ones land, exactly as for the transformers cache, so both backends
evict the same steps in the same order.

Positions: our ``Segment.pos_start`` IS the llama.cpp position. After every eviction the kept
segments are packed to contiguous positions from 0, so a batch always starts at
``seq_pos_max + 1`` (llama.cpp refuses anything else for 1-D RoPE models) and positions never pass
the capacity: an endless episode stays inside the trained context.

The context (and with it the KV buffer) is created once, at the capacity the budget buys
(``GGUFKVLayout``), and never grows; ``set_budget`` builds a context of the new size and copies the
kept cells over with ``llama_state_seq_get_data`` / ``set_data`` (no re-evaluation).

The bookkeeping is the shared memory store's (``aura_ros.memory.store``); this module supplies its
storage surface on the context. The episode API (``core.protocol.EpisodeCache``):
    start = store.reserve(n)           # make room for n tokens (evicts by the policy if needed)
    logits = store.decode(token_ids)   # at the explicit next positions; logits of the last token
    store.commit(kind, step)           # the tokens decoded since the last commit form a segment
    store.set_gate(step, gate, written)
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from aura_ros.memory.budget import BudgetError, KVLayout
from aura_ros.memory.planner import MovePlan
from aura_ros.memory.scorers import EvictionPolicy
from aura_ros.memory.segments import Segment
from aura_ros.memory.store import MemoryStore

SEQ = 0  # one episode = one llama.cpp sequence
# Token ids a benchmark's filler draws from: inside the plain-text range, past BOS/EOS/pad/image.
FILL_TOKEN_IDS = (16, 500)

# KV cache element types: name -> (ggml type id, bytes per block, elements per block).
# f16: 2 bytes an element; q8_0: 32 elements in 34 bytes; q4_0: 32 elements in 18 bytes.
KV_TYPES = {"f16": (1, 2, 1), "q8_0": (8, 34, 32), "q4_0": (2, 18, 32)}


class UnsupportedModelError(RuntimeError):
    """A model this backend cannot run with a bounded, shifted KV cache; the message says why."""


class LlamaDecodeError(RuntimeError):
    """llama_decode failed (the return code is in the message)."""


@dataclass(frozen=True)
class GGUFKVLayout(KVLayout):
    """KVLayout of a GGUF model at a llama.cpp KV cache type (block-quantized types included).

    ``dtype_bytes`` is unused here: an element costs ``block_bytes / block_elems`` bytes (exact,
    since head dims are multiples of the 32-element block). ``ctx_pad``: the context sizes
    llama.cpp accepts without padding up are multiples of it, so capacity rounds DOWN to one.
    """

    block_bytes: int = 2
    block_elems: int = 1
    ctx_pad: int = 1
    kv_type: str = "f16"

    def layer_bytes_per_token(self, layer_idx: int) -> int:
        elems = self.kv_heads[layer_idx] * (self.k_head_dim[layer_idx] + self.v_head_dim[layer_idx])
        return elems * self.block_bytes // self.block_elems

    def capacity(self, budget_bytes: int) -> int:
        tokens = int(budget_bytes) // self.bytes_per_token
        return tokens - tokens % self.ctx_pad

    @classmethod
    def for_model(cls, n_layer: int, n_head_kv: int, k_dim: int, v_dim: int, kv_type: str,
                  ctx_pad: int = 1) -> GGUFKVLayout:
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {sorted(KV_TYPES)}, got {kv_type!r}")
        _, block_bytes, block_elems = KV_TYPES[kv_type]
        if k_dim % block_elems or v_dim % block_elems:
            raise UnsupportedModelError(f"head dims {k_dim}/{v_dim} are not multiples of {block_elems}: "
                                        f"kv_type {kv_type} cannot store them")
        return cls(kv_heads=(n_head_kv,) * n_layer, k_head_dim=(k_dim,) * n_layer, v_head_dim=(v_dim,) * n_layer,
                   dtype_bytes=0, block_bytes=block_bytes, block_elems=block_elems, ctx_pad=ctx_pad,
                   kv_type=kv_type)


class LlamaKVStore(MemoryStore):
    """One episode's KV cache inside one llama.cpp context of fixed size (batch size 1)."""

    def __init__(self, model, layout: GGUFKVLayout, budget_bytes: int, policy: EvictionPolicy | None = None,
                 recent_steps: int = 8, n_threads: int = 1, min_step_tokens: int = 1, block_fraction: float = 0.0,
                 logical_capacity: int | None = None, max_context_steps: int = 0):
        """``logical_capacity`` (benchmarks only): evict at this many tokens inside the context the
        budget buys, to compare at token budgets below llama.cpp's 256-cell context unit; the
        allocation is then larger than the capacity needs."""
        import llama_cpp

        self.llama = llama_cpp
        self.model = model  # a LoadedGGUF (policy.py): the llama_model pointer and its facts
        self.n_threads = int(n_threads)
        super().__init__(layout, budget_bytes, policy=policy, recent_steps=recent_steps,
                         min_step_tokens=min_step_tokens, block_fraction=block_fraction,
                         max_context_steps=max_context_steps)
        # Token id per cached token (-1: an image embedding), committed and uncommitted: what the
        # context holds, slot for slot (positions equal slots here).
        self.tokens = np.zeros(0, dtype=np.int64)
        self.ctx, self.capacity = self._new_context(layout.capacity(budget_bytes))
        if logical_capacity is not None:
            if not 0 < logical_capacity <= self.capacity:
                raise BudgetError(f"logical capacity {logical_capacity} outside the context of {self.capacity}")
            self.capacity = int(logical_capacity)
        self._n_ctx = int(llama_cpp.llama_n_ctx(self.ctx))
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self._batch_size = 0
        self._batch = None
        self._n_vocab = model.n_vocab

    def _token_cost(self) -> str:
        return (f"{self.layout.bytes_per_token} bytes each, kv_type {self.layout.kv_type}, context sizes "
                f"in multiples of {self.layout.ctx_pad}")

    # ----------------------------------------------------------------- the context
    def _new_context(self, capacity: int):
        """A context of exactly ``capacity`` cells; refuses models whose cache cannot shift."""
        lc = self.llama
        p = lc.llama_context_default_params()
        p.n_ctx = capacity
        p.n_batch = p.n_ubatch = min(capacity, 512)
        p.n_seq_max = 1
        p.n_threads = p.n_threads_batch = self.n_threads
        type_id = KV_TYPES[self.layout.kv_type][0]
        p.type_k = p.type_v = type_id
        # llama.cpp stores a quantized V only with flash attention (it refuses the context
        # otherwise); f16 keeps llama.cpp's own choice.
        p.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.layout.kv_type != "f16"
                             else lc.LLAMA_FLASH_ATTN_TYPE_AUTO)
        # Sliding-window models (Gemma 3) can shift only with the full-size SWA cache; the budget
        # arithmetic already counts every layer at full size.
        p.swa_full = True
        p.no_perf = True
        ctx = lc.llama_init_from_model(self.model.ptr, p)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not create a context of {capacity} tokens with kv_type "
                               f"{self.layout.kv_type} (flash attention {'on' if type_id != 1 else 'auto'})")
        n_ctx = int(lc.llama_n_ctx(ctx))
        mem = lc.llama_get_memory(ctx)
        if not lc.llama_memory_can_shift(mem):
            lc.llama_free(ctx)
            raise UnsupportedModelError(
                f"{self.model.describe()}: llama.cpp cannot shift this model's KV cache "
                f"(llama_memory_can_shift is false{self.model.shift_reason()}); evicting from the middle of the "
                "context and closing the gap would abort the process, so this backend refuses it")
        if n_ctx != capacity:
            # llama.cpp padded (or clamped) the size: the KV buffer would not be what the budget says.
            lc.llama_free(ctx)
            raise BudgetError(f"llama.cpp made a context of {n_ctx} tokens when {capacity} were asked for "
                              f"(padding {self.layout.ctx_pad} assumed); refusing an allocation past the budget")
        return ctx, n_ctx

    def close(self) -> None:
        if self._batch is not None:
            self.llama.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx:
            self.llama.llama_free(self.ctx)
            self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown: the library may be gone)
            pass

    # ----------------------------------------------------------------- the storage surface
    @property
    def allocated_bytes(self) -> int:
        """The context's KV bytes: its cells x bytes per token at the KV type."""
        return self.layout.bytes_for(self._n_ctx)

    def _storage_tokens(self) -> int:
        return int(self.tokens.size)

    def _storage_truncate(self, n: int) -> None:
        # Positions equal slots in this store (segments are packed from position 0, pos_span ==
        # length), so the tokens past the first n are the positions from n on.
        if not self.llama.llama_memory_seq_rm(self.mem, SEQ, n, -1):
            raise RuntimeError("llama_memory_seq_rm refused to remove the uncommitted tokens")
        self.tokens = self.tokens[:n]

    def _storage_fill(self, n: int, rng: np.random.Generator) -> None:
        # llama.cpp's cache is written by decoding only: random plain-text tokens at the next
        # positions (past the special tokens at the start of the vocabularies this project meets).
        self.decode(rng.integers(FILL_TOKEN_IDS[0], min(FILL_TOKEN_IDS[1], self.model.n_vocab), n).tolist())

    def _storage_compact(self, keep: list[Segment], moves: MovePlan) -> None:
        """Remove the segments not in ``keep``; shift the kept ones to contiguous positions from 0."""
        lc = self.llama
        kept = {id(s) for s in keep}
        for seg in self.table.segments:
            if id(seg) not in kept:
                if not lc.llama_memory_seq_rm(self.mem, SEQ, seg.pos_start, seg.pos_start + seg.pos_span):
                    raise RuntimeError(f"llama_memory_seq_rm refused positions [{seg.pos_start}, "
                                       f"{seg.pos_start + seg.pos_span})")
        # Ascending order: a segment shifted down lands below the next one's range, so each
        # seq_add touches only its own cells. Neighbouring segments with the same shift go together.
        run = None  # [p0, p1, delta]
        runs = []
        for seg, new_pos in zip(keep, moves.new_pos.tolist()):
            delta = new_pos - seg.pos_start
            if delta == 0:
                continue
            p0, p1 = seg.pos_start, seg.pos_start + seg.pos_span
            if run is not None and run[1] == p0 and run[2] == delta:
                run[1] = p1
            else:
                run = [p0, p1, delta]
                runs.append(run)
        for p0, p1, delta in runs:
            lc.llama_memory_seq_add(self.mem, SEQ, p0, p1, delta)
        if keep:
            self.tokens = np.concatenate([self.tokens[s.start: s.end] for s in keep])
        else:
            self.tokens = np.zeros(0, dtype=np.int64)

    def _storage_resize(self, capacity: int) -> int:
        """A context of the new size holding the kept cells, copied (``llama_state_seq_get_data`` ->
        ``set_data``), not re-evaluated. The new context is created before the old one is freed, so
        for a moment both exist; if llama.cpp cannot create it, nothing has changed."""
        state = self.get_state()
        ctx, n_ctx = self._new_context(capacity)
        lc = self.llama
        if state and lc.llama_state_seq_set_data(ctx, _ubuf(state), len(state), SEQ) == 0:
            lc.llama_free(ctx)
            raise RuntimeError("llama.cpp refused the kept cells in the new context")
        lc.llama_free(self.ctx)
        self.ctx, self.capacity, self._n_ctx, self.mem = ctx, n_ctx, n_ctx, lc.llama_get_memory(ctx)
        return n_ctx

    def pos_range(self) -> tuple[int, int]:
        """(llama_memory_seq_pos_min, pos_max) of the episode's sequence; (-1, -1) when empty."""
        return (int(self.llama.llama_memory_seq_pos_min(self.mem, SEQ)),
                int(self.llama.llama_memory_seq_pos_max(self.mem, SEQ)))

    # ----------------------------------------------------------------- decoding
    def _ensure_batch(self, n: int) -> None:
        if self._batch is None or n > self._batch_size:
            if self._batch is not None:
                self.llama.llama_batch_free(self._batch)
            self._batch_size = max(n, 64)
            self._batch = self.llama.llama_batch_init(self._batch_size, 0, 1)

    def decode(self, token_ids, all_logits: bool = False) -> np.ndarray:
        """Decode ``token_ids`` at the next positions (space reserved); the last token's logits
        [n_vocab], or every token's [n, n_vocab] with ``all_logits``."""
        ids = [int(t) for t in token_ids]
        n = len(ids)
        if n == 0:
            raise ValueError("nothing to decode")
        if self.used_tokens + n > self.capacity:
            raise BudgetError(f"{n} new tokens do not fit ({self.used_tokens}/{self.capacity} used): reserve() first")
        lc = self.llama
        start = self.next_position
        step = min(n, int(lc.llama_n_batch(self.ctx)))
        self._ensure_batch(step)
        b = self._batch
        out = []
        for lo in range(0, n, step):
            chunk = ids[lo: lo + step]
            b.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                b.token[i] = tok
                b.pos[i] = start + lo + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = SEQ
                b.logits[i] = 1 if (all_logits or lo + i == n - 1) else 0
            rc = lc.llama_decode(self.ctx, b)
            if rc != 0:
                # llama.cpp leaves the cells of a failed batch removed; ours from earlier chunks stay
                # uncommitted and rollback() removes them.
                raise LlamaDecodeError(f"llama_decode returned {rc} at position {start + lo} "
                                       f"({self.used_tokens}/{self.capacity} cells used)")
            self.tokens = np.concatenate([self.tokens, np.asarray(chunk, dtype=np.int64)])
            if all_logits:
                out.append(self._logits(len(chunk)))
        if all_logits:
            return np.concatenate(out, axis=0)
        return self._logits(1)[0]

    def _logits(self, n: int) -> np.ndarray:
        """The last batch's ``n`` output rows [n, n_vocab], copied (llama.cpp reuses the buffer)."""
        lc = self.llama
        ptr = lc.llama_get_logits_ith(self.ctx, -1) if n == 1 else lc.llama_get_logits(self.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n * self._n_vocab,)).reshape(n, self._n_vocab).copy()

    def note_external(self, n_tokens: int, n_pos: int) -> None:
        """Tokens decoded by someone else at the next positions (libmtmd's image chunk)."""
        if n_pos != n_tokens:
            raise UnsupportedModelError("an image chunk advanced positions unlike its token count (M-RoPE)")
        self.tokens = np.concatenate([self.tokens, np.full(n_tokens, -1, dtype=np.int64)])

    # ----------------------------------------------------------------- state (snapshots, set_budget)
    def get_state(self) -> bytes:
        """The sequence's cells (positions, keys, values) as llama.cpp serialises them."""
        lc = self.llama
        size = int(lc.llama_state_seq_get_size(self.ctx, SEQ))
        buf = (ctypes.c_uint8 * size)()
        n = int(lc.llama_state_seq_get_data(self.ctx, buf, size, SEQ))
        return bytes(buf[:n])

    def set_state(self, state: bytes, segments: list[Segment], tokens: np.ndarray) -> None:
        """Replace the episode by ``state`` with its segment table; on refusal the old one is back."""
        if self.uncommitted_tokens:
            raise RuntimeError("set_state() between steps only")
        lc = self.llama
        old = self.get_state()
        lc.llama_memory_seq_rm(self.mem, SEQ, -1, -1)
        if state and lc.llama_state_seq_set_data(self.ctx, _ubuf(state), len(state), SEQ) == 0:
            lc.llama_memory_seq_rm(self.mem, SEQ, -1, -1)
            if old:
                lc.llama_state_seq_set_data(self.ctx, _ubuf(old), len(old), SEQ)
            raise RuntimeError("llama.cpp refused the snapshot's cells (another model or KV type?)")
        self.tokens = np.asarray(tokens, dtype=np.int64).copy()
        self.restore_counters(segments)



def _ubuf(data: bytes):
    return (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
