"""The step loop: one control step through the VLM and the gated cache.

    policy = VLMPolicy.from_pretrained(None, PolicyConfig(...))   # None: the embedded default
    policy.set_instruction("pick up the red block")
    while True:
        action = policy.step(Observation(rgb_frame, joint_positions))

Each step appends one observation segment (the frame's image tokens and a compact text of the
joint state) and one action segment (the action tokens, decoded under a logits mask), then the
action gate scores the step and the cache is told whether it is long-term memory. The cache
never grows; positions are explicit (mrope for the Qwen family); nothing per step outlives it.
"""
from __future__ import annotations

import inspect
import threading
import weakref

import numpy as np
import torch

from aura_ros.backends.transformers.cache import GatedKVCache
from aura_ros.backends.transformers.positions import mrope_positions, rope_positions
from aura_ros.backends.transformers.rope import RopeRotator
from aura_ros.backends.transformers.unbounded import UnboundedCache
from aura_ros.core.base import PolicyBase
from aura_ros.core.config import PolicyConfig
from aura_ros.core.types import Action, frames
from aura_ros.memory import BudgetError, GateDecision, Kind
from aura_ros.memory.budget import budget_error
from aura_ros.memory.stats import StepStats


def constrained_argmax(logits: torch.Tensor, allowed_ids: torch.Tensor) -> int:
    """Index into ``allowed_ids`` of the highest logit among them (a logits mask)."""
    return int(torch.argmax(logits.index_select(-1, allowed_ids)).item())


def cache_kwarg(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` from transformers 5.2x on
    (``past_key_values`` is deprecated there and removed in 5.40), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


MODEL_INPUTS = ("input_ids", "pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes")
MROPE_IMAGE_PROMPT = "<|vision_start|><|image_pad|><|vision_end|>"


# ---------------------------------------------------------------------- the token layout
# One source of truth for what the model reads: the runtime (VLMPolicy) and the trainer
# (backends/transformers/train.py) both encode through these functions.
def image_prompt(processor, is_mrope: bool) -> str:
    """The placeholder the processor expands into one frame's image tokens."""
    if is_mrope:
        return MROPE_IMAGE_PROMPT
    token = getattr(processor, "image_token", None)
    if token is None:
        raise ValueError(f"{type(processor).__name__} has no image_token; not a supported VLM processor")
    return token


def encode_instruction(tokenizer, config: PolicyConfig, instruction: str) -> torch.Tensor:
    """[1, n] ids of the pinned segment: system prompt (with the tokenizer's special tokens) + instruction.

    The instruction is tokenized as plain text (special-token parsing off), so a sender cannot
    inject action tokens or structure markers (<act_0>, <obs>, <image>, </s>) into the prompt.
    """
    head = tokenizer(f"{config.system_prompt}\nInstruction: ", add_special_tokens=True,
                     return_tensors="pt")["input_ids"]
    body = tokenizer(f"{instruction}\n", add_special_tokens=False, split_special_tokens=True,
                     return_tensors="pt")["input_ids"]
    return torch.cat([head, body], dim=1)


def encode_observation(processor, config: PolicyConfig, prompt: str, is_mrope: bool, image,
                       state: np.ndarray) -> dict:
    """One step's observation segment "<obs>{image tokens}<state>{joint state}<act>", CPU tensors.

    image: one frame, or a tuple of frames (one per camera: their image tokens one after another).

    Only what the forward pass needs: no attention mask (the cache builds it), no labels or token
    types (PaliGemma's prefix-LM types do not apply to a stream of steps).
    """
    views = frames(image)
    # Several cameras: one image block per camera, in camera order, inside the one observation
    # segment (the gate's novelty reads the mean over all of them).
    text = config.observation_text(state, prompt * len(views))
    inputs = processor(text=[text], images=[list(views)] if not is_mrope else list(views),
                       return_tensors="pt", add_special_tokens=False)
    return {k: v for k, v in inputs.items() if k in MODEL_INPUTS}


def observation_embedding(inputs_embeds: torch.Tensor, input_ids: torch.Tensor,
                          image_token_id: int | None) -> np.ndarray:
    """A cheap 1-D summary of one observation: the mean input embedding of its image tokens.

    inputs_embeds: [1, n, hidden], the decoder's input (image features merged in); input_ids: [1, n].
    The mean over the whole chunk when no image token can be told apart.
    """
    mask = None if image_token_id is None else input_ids[0].to(inputs_embeds.device) == image_token_id
    if mask is None or mask.shape[0] != inputs_embeds.shape[1] or not bool(mask.any()):
        return inputs_embeds[0].float().mean(0).cpu().numpy()
    return inputs_embeds[0, mask].float().mean(0).cpu().numpy()


def _embedding_hook(policy_ref):
    """A decoder pre-hook that keeps the decoder's input embeddings while the policy asks for them.

    Several policies may share one loaded model (``aura-ros serve``), each stepping on its own
    thread: every policy's hook sees every forward of the shared decoder, so a policy keeps only
    the forward of the thread that asked (``_capture_thread``), never another robot's frame.
    """

    def hook(module, args, kwargs):
        policy = policy_ref()
        if policy is not None and policy._capture_thread == threading.get_ident():
            embeds = kwargs.get("inputs_embeds")
            policy._captured_embeds = embeds.detach() if isinstance(embeds, torch.Tensor) else None

    return hook


class VLMPolicy(PolicyBase):
    """A transformers VLM driven one control step at a time through a GatedKVCache."""

    def __init__(self, model, processor, config: PolicyConfig, action_token_ids: list[int],
                 instruction: str = ""):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.config = config
        self.space = config.action_space()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        if len(action_token_ids) < config.n_bins:
            raise ValueError(f"model has {len(action_token_ids)} action tokens, config needs {config.n_bins}")
        self.action_ids = torch.tensor(action_token_ids[: config.n_bins], device=self.device)
        mc = model.config
        self.is_mrope = "mrope_section" in (getattr(mc.get_text_config(), "rope_parameters", None) or {}) \
            or mc.model_type in ("qwen2_vl", "qwen2_5_vl")
        self.image_token_id = getattr(mc, "image_token_id", None) or getattr(mc, "image_token_index", None)
        self._cache_kwarg = cache_kwarg(model)
        # The observation embedding for the gate's novelty term, captured from the decoder's input
        # during the observation chunk's forward pass (no second pass through the vision tower).
        self.last_observation_embedding: np.ndarray | None = None
        self._capture_thread: int | None = None  # the thread whose forward the hook keeps; None: none
        self._captured_embeds: torch.Tensor | None = None
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        if isinstance(decoder, torch.nn.Module) and decoder is not model:
            # Through a weak reference, and removed when this policy goes: several policies may
            # share one loaded model (a benchmark), and the model must not keep them alive.
            handle = decoder.register_forward_pre_hook(_embedding_hook(weakref.ref(self)), with_kwargs=True)
            weakref.finalize(self, handle.remove)
        self.cache = self._make_cache()
        self._image_prompt = self._find_image_prompt()
        self._start_episode(instruction)

    def _make_cache(self) -> GatedKVCache | UnboundedCache:
        cfg = self.config
        if cfg.eviction == "unbounded":
            return UnboundedCache(self.model.config, cfg.unbounded_max_tokens)
        policy = self._eviction_policy()
        if policy.uses_attention:
            from aura_ros.backends.transformers.attention import register
            from aura_ros.backends.transformers.loading import is_shared

            if is_shared(self.model):
                # The switch is the model's, not the policy's: every robot on this model would run
                # eager attention, and a switch during another robot's forward mixes both.
                raise ValueError(f"eviction {cfg.eviction!r} scores segments by attention, which switches the "
                                 "loaded model's attention implementation, and this model is shared by the robots "
                                 "of this process (aura-ros serve): run that robot in a node of its own")

            self.model.set_attn_implementation(register())
        return GatedKVCache(self.model.config, cfg.budget_bytes, RopeRotator.from_model(self.model), policy=policy,
                            recent_steps=cfg.recent_steps, dtype=self.dtype, device=self.device,
                            block_fraction=cfg.block_fraction, max_context_steps=cfg.max_context_steps)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, model: str | None, config: PolicyConfig | None = None, instruction: str = "",
                        n_threads: int | None = None, **load_kwargs) -> VLMPolicy:
        """Load ``model`` (a local folder or hub id; None: the embedded default) and wrap it.

        n_threads: torch's CPU threads for this process (None or 0: torch's own choice). Measured:
        with 2 threads on a 2-core machine that also runs DDS and the sim, one busy neighbour made
        a 6 ms step take 600 ms; with 1 thread it stayed at 6 ms."""
        from aura_ros.backends.transformers.loading import load_model
        from aura_ros.backends.transformers.vocab import action_token_ids

        if n_threads and n_threads > 0:
            torch.set_num_threads(int(n_threads))
        config = config or PolicyConfig()
        loaded = load_model(model, **load_kwargs)
        ids = action_token_ids(loaded.tokenizer, config.n_bins)
        return cls(loaded.model, loaded.processor, config, ids, instruction)

    def _find_image_prompt(self) -> str:
        return image_prompt(self.processor, self.is_mrope)

    # ------------------------------------------------------------------ forward helpers
    def _observation_embedding(self, input_ids: torch.Tensor) -> np.ndarray | None:
        embeds, self._captured_embeds = self._captured_embeds, None
        if embeds is None or embeds.dim() != 3:
            return None
        return observation_embedding(embeds, input_ids, self.image_token_id)

    def _positions(self, start: int, input_ids: torch.Tensor, grid=None) -> tuple[torch.Tensor, int]:
        n = input_ids.shape[1]
        if not self.is_mrope:
            return rope_positions(start, n, self.device), n
        merge = getattr(self.model.config.vision_config, "spatial_merge_size", 1)
        pos, span = mrope_positions(input_ids.cpu(), start, self.image_token_id, grid, merge)
        return pos.to(self.device), span

    @torch.inference_mode()
    def _forward(self, inputs: dict, commit: tuple[Kind, int] | None) -> torch.Tensor:
        """Append one chunk to the cache (space already reserved) and return its last logits.

        With ``commit``, the tokens written since the last commit become one segment.
        """
        ids = inputs["input_ids"]
        pos, span = self._positions(self.cache.next_position, ids, inputs.get("image_grid_thw"))
        out = self.model(**inputs, **{self._cache_kwarg: self.cache}, position_ids=pos, use_cache=True,
                         logits_to_keep=1)
        if commit is not None:
            # Text advances one position a token (the default); an mrope image chunk less.
            self.cache.commit(commit[0], commit[1], pos_span=span if "image_grid_thw" in inputs else None)
        return out.logits[0, -1]

    def _encode_observation(self, image, state: np.ndarray) -> dict:
        inputs = encode_observation(self.processor, self.config, self._image_prompt, self.is_mrope, image, state)
        return {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in inputs.items()}

    # ------------------------------------------------------------------ public API
    def encode_instruction(self, instruction: str) -> dict:
        """The pinned segment: system prompt (with the tokenizer's special tokens) + the instruction.

        The instruction is tokenized as plain text (special-token parsing off), so a sender cannot
        inject action tokens or structure markers (<act_0>, <obs>, <image>, </s>) into the prompt.
        """
        return {"input_ids": encode_instruction(self.tokenizer, self.config, instruction).to(self.device)}

    def set_instruction(self, instruction: str) -> None:
        """Pin a new system prompt + instruction; older memory stays unless configured otherwise.

        Raises BudgetError, with the old instruction still pinned, when the new one cannot fit
        beside one step.
        """
        inputs = self.encode_instruction(instruction)
        n = inputs["input_ids"].shape[1]
        if isinstance(self.cache, GatedKVCache):
            reason = budget_error(self.cache.layout, self.cache.budget_bytes, n, self.cache.step_tokens)
            if reason:
                raise BudgetError(f"instruction of {n} tokens refused: {reason}")
        if self.config.clear_memory_on_instruction:
            self.cache.clear_memory(keep_pinned=False)
            self.gate.reset()
        else:
            self.cache.drop_pinned()
        self.cache.reserve(n)
        self._forward(inputs, (Kind.PINNED, -1))
        self.instruction = instruction

    def _instruction_tokens(self, instruction: str) -> int:
        return int(encode_instruction(self.tokenizer, self.config, instruction).shape[1])

    def _step_tokens(self, image, state: np.ndarray) -> int:
        inputs = encode_observation(self.processor, self.config, self._image_prompt, self.is_mrope, image, state)
        return int(inputs["input_ids"].shape[1]) + self.space.tokens_per_step

    def budget_error(self, budget_bytes: int) -> str | None:
        if not isinstance(self.cache, GatedKVCache):
            return "the unbounded reference cache has no budget"
        return self.cache.budget_error(budget_bytes)

    @property
    def kv_store(self):
        return self.cache

    def is_out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))

    def free_memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.mem_get_info(self.device)[0])
        return super().free_memory_bytes()

    def save_memory(self, path) -> str:
        """Write the episode's memory (KV, segments, positions, gate state) atomically."""
        from aura_ros.backends.transformers import snapshot

        if not isinstance(self.cache, GatedKVCache):
            raise RuntimeError("only the gated cache can be saved")
        extra = snapshot.fmt.policy_extra(self)
        return str(snapshot.save(self.cache, path, snapshot.model_fingerprint(self.model), extra))

    def load_memory(self, path) -> dict:
        """Resume an episode from a snapshot of the same model; returns the snapshot's ``extra``.

        Everything is validated before anything changes; SnapshotError leaves memory as it was.
        The snapshot's pinned tokens hold the instruction it was saved with: ``self.instruction``
        then says so, and the returned ``extra["instruction"]`` lets the caller decide whether a
        configured instruction should replace it (``set_instruction``); nothing is overridden here.
        """
        from aura_ros.backends.transformers import snapshot

        if not isinstance(self.cache, GatedKVCache):
            raise snapshot.SnapshotError("only the gated cache can be restored from a snapshot")
        snap = snapshot.read(self.cache, path, snapshot.model_fingerprint(self.model))
        state = snapshot.policy_state(snap, self.gate)
        snap.apply(self.cache)
        self.step_index, self.writes_total, self.write_rate = state.step_index, state.writes_total, state.write_rate
        self.instruction = state.instruction
        self.gate.load_state(state.gate)
        return dict(snap.extra)

    def reset(self) -> None:
        """Forget the episode; the instruction stays pinned."""
        self.cache.clear_memory(keep_pinned=True)
        self.gate.reset()

    @torch.inference_mode()
    def _step(self, image, state: np.ndarray, event: bool, t0: float) -> Action:
        step = self.step_index
        inputs = self._encode_observation(image, state)
        n_act = self.space.tokens_per_step
        self.cache.reserve(inputs["input_ids"].shape[1] + n_act)
        self._capture_thread = threading.get_ident()
        try:
            logits = self._forward(inputs, (Kind.OBSERVATION, step))
        finally:
            self._capture_thread = None
        self.last_observation_embedding = self._observation_embedding(inputs["input_ids"])
        bins = np.empty(n_act, dtype=np.int64)
        first_logits = logits.index_select(-1, self.action_ids).float().cpu().numpy()
        for i in range(n_act):
            bins[i] = constrained_argmax(logits, self.action_ids)
            token = self.action_ids[bins[i]].view(1, 1)
            # Every action token is fed back (the last one too), so the whole action is in memory
            # for later steps; the step's action tokens form one segment.
            logits = self._forward({"input_ids": token}, (Kind.ACTION, step) if i == n_act - 1 else None)
        return self._finish_step(step, bins, first_logits, event, t0)

    def _stats(self, step: int, decision: GateDecision, latency_ms: float) -> StepStats:
        m = self.cache.stats()
        dev_alloc = dev_res = 0
        if self.device.type == "cuda":
            dev_alloc = torch.cuda.memory_allocated(self.device)
            dev_res = torch.cuda.memory_reserved(self.device)
        return StepStats(**vars(m), step=step, device_allocated_bytes=dev_alloc, device_reserved_bytes=dev_res,
                         gate_value=decision.value, written=decision.written, writes_total=self.writes_total,
                         write_rate=self.write_rate, action_delta=decision.action_delta, step_latency_ms=latency_ms)
