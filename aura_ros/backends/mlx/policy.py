"""MLXPolicy: a Llava policy on MLX, one control step at a time, on a fixed-slot MLX KV store.

    policy = make_policy(None, PolicyConfig(...), backend="mlx", instruction="stack the cubes")
    action = policy.step(Observation(rgb_frame, joint_positions))

The token layout is the transformers backend's (``backends/transformers/policy.py``), with the same
processor (transformers' LlavaProcessor, NumPy tensors): the pinned segment is the system prompt +
"Instruction: ...", each step one observation segment "<obs>{image tokens}<state>{joint state}<act>"
and one action segment (the action tokens, decoded under a mask of the action tokens and fed
back). Same weights, same ids, same pixel values: the two backends decode the same bins, which a
test checks step by step through evictions.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from aura_ros.backends.mlx.kvstore import MLXKVStore, rope_inv_freq
from aura_ros.backends.mlx.model import LlavaModel, UnsupportedModelError, check_supported, load_llava
from aura_ros.core.base import PolicyBase
from aura_ros.core.config import PolicyConfig
from aura_ros.core.types import Action
from aura_ros.memory import BudgetError, GateDecision, Kind
from aura_ros.memory.budget import KVLayout, budget_error
from aura_ros.memory.stats import StepStats

# The trained default shipped with the package (the transformers backend's TRAINED_DEFAULT_DIR:
# read in place, nothing is copied or built).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "default_policy"
ACTION_TOKEN_FORMAT = "<act_{}>"


def resolve_folder(model: str | Path | None) -> Path:
    """A local Llava folder (None: the shipped default). This backend never downloads."""
    path = DEFAULT_MODEL_DIR if model is None or str(model) == "" else Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model folder (config.json, *.safetensors, processor); the MLX "
                                "backend loads local folders only")
    return path


def action_token_ids(tokenizer, n_bins: int) -> list[int]:
    """The ids of "<act_0>".."<act_{n_bins-1}>", each one token (the vocabulary every aura_ros model has)."""
    names = [ACTION_TOKEN_FORMAT.format(k) for k in range(n_bins)]
    vocab = tokenizer.get_vocab()
    missing = [n for n in names if n not in vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks {len(missing)} of the {n_bins} action tokens (first: {missing[0]!r})")
    ids = [vocab[n] for n in names]
    if list(tokenizer("".join(names), add_special_tokens=False)["input_ids"]) != ids:
        raise ValueError("the action tokens do not encode to one id each")
    return ids


def model_fingerprint(folder: Path, model: LlavaModel) -> str:
    """The config and a sample of the input embeddings: tells models apart, even same-config ones
    (a snapshot resumes only on the model that wrote it)."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    emb = np.array(model.language_model.model.embed_tokens.weight).reshape(-1)
    h.update(emb[:: max(1, emb.size // 4096)].astype(np.float32).tobytes())
    return "mlx:" + h.hexdigest()[:32]


class MLXPolicy(PolicyBase):
    """A Llava folder driven one control step at a time through an MLXKVStore."""

    def __init__(self, model: LlavaModel, processor, config: PolicyConfig, action_ids: list[int],
                 instruction: str = "", fingerprint: str = ""):
        if config.eviction == "unbounded":
            raise ValueError("the MLX backend runs a fixed-slot store: eviction 'unbounded' is the transformers "
                             "backend's reference only")
        if len(action_ids) < config.n_bins:
            raise ValueError(f"model has {len(action_ids)} action tokens, config needs {config.n_bins}")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config
        if config.n_cameras != 1:
            # One frame per step here; several cameras run on the transformers backend.
            raise ValueError(f"the MLX backend takes one camera per observation, not {config.n_cameras}; "
                             "several cameras run on the transformers backend")
        self.fingerprint = fingerprint
        self.space = config.action_space()
        self.action_ids = np.asarray(action_ids[: config.n_bins], dtype=np.int64)
        self._action_ids_mx = mx.array(self.action_ids.astype(np.int32))
        self.image_token_id = model.image_token_id
        self._image_prompt = getattr(processor, "image_token", None) or "<image>"
        args = model.text_args
        head_dim = args.head_dim or args.hidden_size // args.num_attention_heads
        self.layout = KVLayout(kv_heads=(args.num_key_value_heads,) * args.num_hidden_layers,
                               k_head_dim=(head_dim,) * args.num_hidden_layers,
                               v_head_dim=(head_dim,) * args.num_hidden_layers, dtype_bytes=4)
        self.inv_freq = rope_inv_freq(head_dim, args.rope_theta)
        self.store = self._make_store(config.budget_bytes)
        self._start_episode(instruction)

    def _make_store(self, budget_bytes: int) -> MLXKVStore:
        cfg = self.config
        policy = self._eviction_policy(without_attention="mx.fast.scaled_dot_product_attention")
        return MLXKVStore(self.layout, budget_bytes, self.inv_freq, policy=policy, recent_steps=cfg.recent_steps,
                          block_fraction=cfg.block_fraction, max_context_steps=cfg.max_context_steps)

    @classmethod
    def from_pretrained(cls, model: str | Path | None, config: PolicyConfig | None = None, instruction: str = "",
                        **ignored) -> MLXPolicy:
        """Load a local Llava folder (None: the shipped default) onto MLX.

        ``ignored``: loading options of other backends (the registry passes none: this backend's
        OPTIONS are empty); it runs float32 on MLX's default device (the CPU on Linux, Metal on macOS).
        Raises UnsupportedModelError (with the reason) for what it cannot run.
        """
        from transformers import AutoProcessor

        folder = resolve_folder(model)
        cfg = json.loads((folder / "config.json").read_text())
        check_supported(cfg)
        config = config or PolicyConfig()
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        if getattr(processor, "image_processor", None) is None:
            raise UnsupportedModelError(f"{folder}: no image processor (AutoProcessor returned "
                                        f"{type(processor).__name__})")
        net = load_llava(folder)
        return cls(net, processor, config, action_token_ids(processor.tokenizer, config.n_bins), instruction,
                   model_fingerprint(folder, net))

    # ------------------------------------------------------------------ encoding (the transformers layout)
    def encode_instruction(self, instruction: str) -> np.ndarray:
        """[n] ids: system prompt (with the tokenizer's special tokens) + the instruction as plain text
        (special-token parsing off), so a sender cannot inject action tokens or markers."""
        head = self.tokenizer(f"{self.config.system_prompt}\nInstruction: ", add_special_tokens=True)["input_ids"]
        body = self.tokenizer(f"{instruction}\n", add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return np.asarray(list(head) + list(body), dtype=np.int64)

    def encode_observation(self, image, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids [n], pixel values [1, C, H, W]) of "<obs>{image tokens}<state>{joint state}<act>"."""
        if image is None:
            raise ValueError("the MLX policy runs a VLM: every step needs a camera frame")
        text = self.config.observation_text(state, self._image_prompt)
        inputs = self.processor(text=[text], images=[[image]], return_tensors="np", add_special_tokens=False)
        return np.asarray(inputs["input_ids"][0], dtype=np.int64), np.asarray(inputs["pixel_values"], np.float32)

    # ------------------------------------------------------------------ forward
    def _forward(self, ids: np.ndarray, pixel_values: np.ndarray | None = None,
                 commit: tuple[Kind, int] | None = None) -> tuple[mx.array, mx.array | None]:
        """Append one chunk (space already reserved); the last token's logits and the image features.
        The store's arrays are evaluated with the logits, so no lazy graph outlives the chunk."""
        embeds, feats = self.model.embed(ids, pixel_values)
        logits = self.model.last_logits(embeds, self.store.layers)
        mx.eval(logits, *self.store.arrays(), *(() if feats is None else (feats,)))
        if commit is not None:
            self.store.commit(commit[0], commit[1])
        return logits, feats

    # ------------------------------------------------------------------ public API
    def set_instruction(self, instruction: str) -> None:
        """Pin a new system prompt + instruction; BudgetError (the old one kept) when it cannot fit."""
        ids = self.encode_instruction(instruction)
        reason = budget_error(self.layout, self.store.budget_bytes, ids.size, self.store.step_tokens)
        if reason:
            raise BudgetError(f"instruction of {ids.size} tokens refused: {reason}")
        if self.config.clear_memory_on_instruction:
            self.store.clear_memory(keep_pinned=False)
            self.gate.reset()
        else:
            self.store.drop_pinned()
        self.store.reserve(ids.size)
        try:
            self._forward(ids, commit=(Kind.PINNED, -1))
        except BaseException:
            self.store.rollback()
            raise
        self.instruction = instruction

    def _instruction_tokens(self, instruction: str) -> int:
        return int(self.encode_instruction(instruction).size)

    def _step_tokens(self, image, state: np.ndarray) -> int:
        return int(self.encode_observation(image, state)[0].size) + self.space.tokens_per_step


    def reset(self) -> None:
        """Forget the episode; the instruction stays pinned."""
        self.store.clear_memory(keep_pinned=True)
        self.gate.reset()

    def _step(self, image, state: np.ndarray, event: bool, t0: float) -> Action:
        step = self.step_index
        ids, pixels = self.encode_observation(image, state)
        n_act = self.space.tokens_per_step
        self.store.reserve(ids.size + n_act)
        logits, feats = self._forward(ids, pixels, (Kind.OBSERVATION, step))
        # The gate's novelty term reads what the decoder read in place of the image tokens.
        self.last_observation_embedding = np.array(feats.mean(axis=0))
        first_logits = np.array(logits[self._action_ids_mx]).astype(np.float32)
        bins = np.empty(n_act, dtype=np.int64)
        for i in range(n_act):
            bins[i] = int(mx.argmax(logits[self._action_ids_mx]).item())
            # Every action token is fed back (the last one too), so the whole action is in memory.
            logits, _ = self._forward(self.action_ids[bins[i]: bins[i] + 1],
                                      commit=(Kind.ACTION, step) if i == n_act - 1 else None)
        return self._finish_step(step, bins, first_logits, event, t0)

    def _stats(self, step: int, decision: GateDecision, latency_ms: float) -> StepStats:
        m = self.store.stats()
        return StepStats(**vars(m), step=step, gate_value=decision.value, written=decision.written,
                         writes_total=self.writes_total, write_rate=self.write_rate,
                         action_delta=decision.action_delta, step_latency_ms=latency_ms)

    # ------------------------------------------------------------------ snapshots
    def save_memory(self, path) -> str:
        """Write the episode's memory (KV, segments, counters, gate state) atomically."""
        from aura_ros.backends.mlx import snapshot

        return str(snapshot.save(self, path))

    def load_memory(self, path) -> dict:
        """Resume from a snapshot of the same model; SnapshotError leaves the memory as it was."""
        from aura_ros.backends.mlx import snapshot

        return snapshot.load(self, path)
