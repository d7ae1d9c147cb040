"""Behaviour cloning of a transformers VLM policy, in the runtime's token layout, on gated contexts.

    streams = default_streams(50)          # expert streams: tasks back to back, no reset
    result = train(streams, out_dir="my-policy", model=None)       # None: the embedded default arch
    policy = VLMPolicy.from_pretrained("my-policy")

What the model reads in training is what the cache holds at run time. A training context for
step t of an episode is: the pinned segment (system prompt + instruction), then, in order, the
steps the cache keeps at step t: the steps the action gate writes (the expert's action changed,
or an external event; the same ``ActionGate`` as the runtime scores the expert's actions), a
recent stretch of 1 to ``context_steps`` steps (a cache holds its protected window and, until it
is full, more), and step t itself; every other step is dropped and the positions run
contiguously from 0, as the cache re-rotates them. Each kept step is encoded by the runtime's own
functions (``policy.encode_instruction`` / ``encode_observation``): the observation segment, then
the action tokens of the expert's action. The loss is the cross-entropy over the action tokens
(the runtime decodes under a mask of the action tokens, so the loss is taken over those logits
only), for every action of the context.

Some contexts also keep the steps whose frame changed most (a stand-in for the gate's
observation-novelty term: a latent fact is then learnable when the cache keeps it), so one model
serves every memory policy the benchmark compares.

Long episodes cost nothing extra: a context never holds more than the kept steps.

The endless run: the records are streams of tasks back to back without a reset
(``sim.tasks.expert_stream``), each task's first step a task boundary. A context of a step in task
j holds the long-term steps of task j and of the task before it, sometimes of older ones too (what
a cache holds with the memory's stale rule, memory.planner), under the instruction of task j; the
loss is taken over task j's actions only. So the policy learns to act on the newest fact with
stale ones of earlier tasks in view, and to reach into the previous task when its instruction asks
(recall_previous). Contexts never exceed ``max_context_steps`` (the node's view cap), so every
budget a user may set shows the policy a context shape it was trained on.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from aura_ros.core.config import PolicyConfig
from aura_ros.memory.gate import ActionGate, GateConfig

TRAIN_INFO_FILE = "aura_ros_train.json"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 4000  # optimizer steps
    batch_size: int = 8
    lr: float = 4e-3
    min_lr_fraction: float = 0.05  # cosine decay down to lr * this
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    # The recent stretch of a training context: up to this many steps. A cache holds more than its
    # protected window (transient steps stay until the budget needs their room), so a policy sees
    # stretches far longer than its ``recent_steps`` at run time and must have seen them in training.
    context_steps: int = 24
    focus_prob: float = 0.6  # targets drawn from the steps where the expert's action changes (else uniform)
    novelty_keep_prob: float = 0.5  # contexts that also keep the frames that changed most
    novelty_top_k: int = 2
    # Loss weight of the action tokens of a decision step (the expert's action differs from the
    # step before): a handful of steps an episode carry the task, the steady rest would drown them.
    decision_weight: float = 20.0
    # Contexts of one step (the frame alone, no history): all of them for the first
    # ``single_frame_warmup_steps`` optimizer steps, then this share. With a history in view from
    # the start, behaviour cloning settles on repeating the previous step's action (right at every
    # steady step) and the vision path never learns to tell the cue frame from the others.
    single_frame_warmup_steps: int = 300
    single_frame_prob: float = 0.15
    # After the warm-up the recent window of a context grows from 1 step to ``context_steps`` over
    # this many optimizer steps. Finding the one remembered step among many by content is learnt
    # from short contexts first: over a long one the attention starts uniform and the gradient
    # towards the remembered step is diluted by every other token.
    window_curriculum_steps: int = 1500
    # The recent window of a context is drawn from 1..context_steps: short contexts are cheap and
    # teach what each frame shows; the long ones are what a cache holds before it is full.
    random_window: bool = True
    # Streams of tasks (the endless run): a context of a step in task j keeps the long-term steps of
    # task j and of the task before it (memory.scorers: task_horizon 1), and with this probability
    # also those of up to two tasks before that (stale ones a roomy cache still holds), so the
    # policy learns to act on the newest fact with older ones in view.
    stale_task_prob: float = 0.3
    # The most steps a context holds (PolicyConfig.max_context_steps: the node reads no more).
    max_context_steps: int = 32
    # torch CPU threads (0: leave torch's default). The result is deterministic by seed at a fixed
    # thread count (float sums are ordered by the threads); 1 makes it the same on every machine.
    threads: int = 1
    log_every: int = 50


@dataclass
class TrainResult:
    out_dir: Path
    losses: list[float]  # mean loss per logged window of steps
    first_loss: float
    final_loss: float
    seconds: float
    config: TrainConfig
    n_episodes: int
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------- which steps a context keeps
def written_steps(actions: np.ndarray, events: np.ndarray | None, policy_config: PolicyConfig,
                  gate_config: GateConfig | None = None) -> np.ndarray:
    """[T] bool: the steps the runtime's action gate writes when the policy emits ``actions``."""
    gate = ActionGate(np.array(policy_config.low), np.array(policy_config.high), policy_config.discrete_mask(),
                      gate_config or policy_config.gate)
    ev = np.zeros(len(actions), dtype=bool) if events is None else np.asarray(events, dtype=bool)
    return np.array([gate.update(a, event=bool(e)).written for a, e in zip(actions, ev)], dtype=bool)


def frame_change(images: list) -> np.ndarray:
    """[T] mean absolute change of each step's frames against the previous step's (0 for the first);
    with several cameras the mean over all of them."""
    from aura_ros.core.types import frames

    out = np.zeros(len(images))
    for t in range(1, len(images)):
        now, before = frames(images[t]), frames(images[t - 1])
        out[t] = float(np.mean([np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))) for a, b in zip(now, before)]))
    return out


def gated_context(t: int, written: np.ndarray, recent_steps: int, extra_keep: Iterable[int] = (),
                  first_kept: int = 0, max_steps: int = 0) -> list[int]:
    """The steps the cache holds when step t is decided: written steps and ``extra_keep`` older than
    the recent window (from step ``first_kept`` on: a stream's older tasks have left), the recent
    window, and t itself (ascending).

    max_steps > 0: at most that many steps, as the cache's view cap leaves them
    (memory.budget.view_capacity): the window's oldest steps go first (a written one among them
    stays, as long-term memory), then the oldest long-term steps.
    """
    extra = [int(s) for s in extra_keep]

    def split(start: int) -> tuple[list[int], list[int]]:
        old = {int(s) for s in np.flatnonzero(written[:start]) if s >= first_kept}
        old |= {s for s in extra if first_kept <= s < start}
        return sorted(old), list(range(start, t + 1))

    start = max(0, t - recent_steps)
    old, window = split(start)
    while max_steps > 0 and len(old) + len(window) > max_steps and len(window) > 1:
        start += 1
        old, window = split(start)
    if max_steps > 0 and len(old) + len(window) > max_steps:
        old = old[len(old) + len(window) - max_steps:]
    return old + window


# ---------------------------------------------------------------------- encoding
class _Encoder:
    """Runtime encodings of episode steps, memoised (a step is encoded once however often it is used)."""

    def __init__(self, loaded, policy_config: PolicyConfig, action_ids: list[int]):
        from aura_ros.backends.transformers.policy import image_prompt

        self.loaded = loaded
        self.config = policy_config
        self.space = policy_config.action_space()
        self.action_ids = torch.tensor(action_ids)
        self.prompt = image_prompt(loaded.processor, loaded.is_mrope)
        self._pinned: dict[str, torch.Tensor] = {}
        self._steps: dict[tuple[int, int], tuple[dict, torch.Tensor]] = {}

    def pinned(self, instruction: str) -> torch.Tensor:
        from aura_ros.backends.transformers.policy import encode_instruction

        if instruction not in self._pinned:
            self._pinned[instruction] = encode_instruction(self.loaded.tokenizer, self.config, instruction)[0]
        return self._pinned[instruction]

    def step(self, e: int, s: int, record) -> tuple[dict, torch.Tensor]:
        """(observation inputs, [tokens_per_step] action bins) of step s of episode e."""
        from aura_ros.backends.transformers.policy import encode_observation

        key = (e, s)
        if key not in self._steps:
            obs = encode_observation(self.loaded.processor, self.config, self.prompt, self.loaded.is_mrope,
                                     record.images[s], np.asarray(record.states[s], dtype=np.float64))
            action = np.asarray(record.actions[s], dtype=np.float64).reshape(-1)
            chunk = self.space.chunk
            # An action chunk: this step's action and the next ones (the last repeated at the end).
            rows = [np.asarray(record.actions[min(s + i, len(record.actions) - 1)]).reshape(-1)
                    for i in range(chunk)] if chunk > 1 else [action]
            bins = torch.from_numpy(np.concatenate([self.space.to_bins(r) for r in rows]))
            self._steps[key] = (obs, bins)
        return self._steps[key]


def _positions(loaded, chunks: list[torch.Tensor], grids: list[torch.Tensor | None]) -> tuple[torch.Tensor, int]:
    """Position ids of a context as the cache gives them: contiguous from 0, per chunk as the
    runtime computes them (Qwen2-VL family: 3-D mrope per image chunk). [L] or [3, L]."""
    from aura_ros.backends.transformers.positions import mrope_positions

    if not loaded.is_mrope:
        n = sum(int(c.shape[0]) for c in chunks)
        return torch.arange(n), n
    merge = getattr(loaded.model.config.vision_config, "spatial_merge_size", 1)
    image_id = getattr(loaded.model.config, "image_token_id", None)
    out, cur = [], 0
    for ids, grid in zip(chunks, grids):
        pos, span = mrope_positions(ids[None], cur, image_id, grid, merge)
        out.append(pos[:, 0])
        cur += span if grid is not None else int(ids.shape[0])
    return torch.cat(out, dim=1), cur


def _task_at(rec, step: int) -> int:
    return rec.task_at(step) if hasattr(rec, "task_at") else 0


def _instruction_at(rec, step: int) -> str:
    return rec.instruction_at(step) if hasattr(rec, "instruction_at") else rec.instruction


def _task_starts(rec) -> np.ndarray:
    return np.asarray(getattr(rec, "task_starts", (0,)) or (0,), dtype=np.int64)


def build_batch(loaded, encoder: _Encoder, samples: list[tuple[int, list[int]]], records: list,
                pad_id: int, decision_weight: float = 1.0) -> dict:
    """Pad a batch of contexts: input ids, positions, mask, pixel inputs, label positions and bins."""
    seqs, positions, pixel, grids_all, labels = [], [], [], [], []
    for e, steps in samples:
        rec = records[e]
        decided_task = _task_at(rec, steps[-1])
        # As the cache holds it: a task boundary pinned the instruction anew after everything
        # before it (Policy.begin_task), so earlier tasks' steps come first, then the pinned
        # segment, then the decided task's steps; the first task of a stream starts with it.
        task_start = int(_task_starts(rec)[decided_task])
        chunks, grids = [], []
        label_pos, label_bins, label_w, offset = [], [], [], 0
        acts = np.asarray(rec.actions)
        pinned = encoder.pinned(_instruction_at(rec, steps[-1]))
        for s in [*steps, None]:
            if pinned is not None and (s is None or s >= task_start):
                chunks.append(pinned)
                grids.append(None)
                offset += int(pinned.shape[0])
                pinned = None
            if s is None:
                break
            obs, bins = encoder.step(e, s, rec)
            ids = obs["input_ids"][0]
            grid = obs.get("image_grid_thw")
            chunks += [ids, encoder.action_ids[bins]]
            grids += [grid, None]
            pixel.append(obs["pixel_values"])
            if grid is not None:
                grids_all.append(grid)
            offset += int(ids.shape[0])
            if _task_at(rec, s) == decided_task:
                # The hidden state before each action token predicts it (the last observation
                # token <act> predicts the first action token, and so on). An earlier task's
                # steps are context only: they were decided under that task's instruction.
                label_pos += list(range(offset - 1, offset - 1 + len(bins)))
                label_bins += bins.tolist()
                decision = s == 0 or not np.array_equal(acts[s], acts[s - 1])
                label_w += [decision_weight if decision else 1.0] * len(bins)
            offset += len(bins)
        pos, _ = _positions(loaded, chunks, grids)
        seqs.append(torch.cat(chunks))
        positions.append(pos)
        labels.append((label_pos, label_bins, label_w))
    L = max(int(s.shape[0]) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    pos_shape = (3, B, L) if loaded.is_mrope else (B, L)
    position_ids = torch.zeros(pos_shape, dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, positions)):
        n = int(s.shape[0])
        input_ids[i, :n] = s
        mask[i, :n] = 1
        if loaded.is_mrope:
            position_ids[:, i, :n] = p
        else:
            position_ids[i, :n] = p
    rows = torch.tensor([i for i, (lp, _, _) in enumerate(labels) for _ in lp])
    cols = torch.tensor([c for lp, _, _ in labels for c in lp])
    targets = torch.tensor([b for _, lb, _ in labels for b in lb])
    weights = torch.tensor([w for _, _, lw in labels for w in lw], dtype=torch.float32)
    batch = {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids,
             "pixel_values": torch.cat(pixel, dim=0), "rows": rows, "cols": cols, "targets": targets,
             "weights": weights}
    if grids_all:
        batch["image_grid_thw"] = torch.cat(grids_all, dim=0)
    return batch


def action_logits(model, batch: dict, action_ids: torch.Tensor) -> torch.Tensor:
    """[n_labels, n_bins] logits over the action tokens at every labelled action position."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values",
                                    "image_grid_thw") if k in batch}
    hidden = model.model(**inputs, use_cache=False).last_hidden_state
    h = hidden[batch["rows"], batch["cols"]]
    head = model.get_output_embeddings()
    logits = h @ head.weight.index_select(0, action_ids).T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias.index_select(0, action_ids)
    return logits


def action_loss(model, batch: dict, action_ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the expert's action bins, over the action tokens' logits only (the
    runtime decodes under that mask)."""
    ce = torch.nn.functional.cross_entropy(action_logits(model, batch, action_ids).float(), batch["targets"],
                                           reduction="none")
    w = batch.get("weights")
    return ce.mean() if w is None else (ce * w).sum() / w.sum()


# ---------------------------------------------------------------------- sampling
class ContextSampler:
    """Draws (episode, kept steps) training contexts, deterministic given the generator."""

    def __init__(self, records: list, policy_config: PolicyConfig, cfg: TrainConfig):
        self.records = records
        self.cfg = cfg
        self.written = [written_steps(r.actions, r.events, policy_config) for r in records]
        self.novel = []
        self.focus = []
        self.starts = [_task_starts(r) for r in records]
        for r, starts in zip(records, self.starts):
            change = frame_change(r.images)
            # The frames that changed most, per task of a stream (each task has its own latent fact).
            bounds = list(starts) + [len(change)]
            novel_parts = []
            for a, b in zip(bounds[:-1], bounds[1:]):
                k = min(cfg.novelty_top_k, b - a)
                if k > 0:
                    novel_parts.append(a + np.argsort(-change[a:b], kind="stable")[:k])
            novel = np.concatenate(novel_parts) if novel_parts else np.array([], dtype=int)
            self.novel.append(novel)
            # The steps worth practising most: where the action changes (the cue's reaction, the
            # recall) and the frames that changed most (a latent fact).
            acts = np.asarray(r.actions)
            changed = np.flatnonzero(np.any(acts[1:] != acts[:-1], axis=1)) + 1
            focus = np.unique(np.concatenate([changed, novel]))
            self.focus.append(focus[focus < len(acts)])

    def sample(self, rng: np.random.Generator, single_frame: bool = False,
               max_window: int | None = None) -> tuple[int, list[int]]:
        """One context: its episode and kept steps. ``max_window`` caps the recent window (the
        curriculum); None: ``context_steps``."""
        cfg = self.cfg
        hi = cfg.context_steps if max_window is None else min(cfg.context_steps, max_window)
        e = int(rng.integers(len(self.records)))
        T = len(self.records[e].actions)
        focus = self.focus[e]
        if len(focus) and rng.random() < cfg.focus_prob:
            t = int(rng.choice(focus))
        else:
            t = int(rng.integers(T))
        if single_frame:
            return e, [t]
        extra = self.novel[e] if rng.random() < cfg.novelty_keep_prob else ()
        # At least one step of window: with none, the remembered step sits right before the
        # decided one, and copying the previous step's action is a shortcut the runtime's window
        # never offers.
        window = int(rng.integers(1, max(1, hi) + 1)) if cfg.random_window else hi
        # A stream: the task before this one stays (task_horizon 1); older ones sometimes too.
        starts = self.starts[e]
        j = int(np.searchsorted(starts, t, side="right") - 1)
        back = 1 + (int(rng.integers(1, 3)) if rng.random() < cfg.stale_task_prob else 0)
        first_kept = int(starts[max(0, j - back)])
        return e, gated_context(t, self.written[e], window, extra, first_kept=first_kept,
                                max_steps=cfg.max_context_steps)


# ---------------------------------------------------------------------- the loop
def train(episodes: Iterable, out_dir: str | Path, model: str | Path | None = None,
          config: TrainConfig | None = None, policy_config: PolicyConfig | None = None,
          progress: bool = True, init_seed: int = 0) -> TrainResult:
    """Behaviour-clone ``model`` (None: a fresh embedded-default architecture with random weights;
    any model ``load_model`` supports, given action tokens) on ``episodes`` (EpisodeRecord-like:
    instruction, images, states, actions, events) and save it to ``out_dir``."""
    from tqdm.auto import tqdm

    from aura_ros.backends.transformers.loading import load_model
    from aura_ros.backends.transformers.store import quiet_progress
    from aura_ros.backends.transformers.vocab import action_token_ids

    cfg = config or TrainConfig()
    pcfg = policy_config or PolicyConfig()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    records = list(episodes)
    if not records:
        raise ValueError("no episodes to train on")
    out = Path(out_dir)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    source = model
    if model is None:
        import tempfile

        from aura_ros.backends.transformers import tiny_models
        from aura_ros.backends.transformers.loading import DEFAULT_ARCH

        tmp = Path(tempfile.mkdtemp(prefix="aura_ros_train_init_"))
        source = tiny_models.build_tiny_vlm(DEFAULT_ARCH, tmp, seed=init_seed, n_action_bins=pcfg.n_bins)
    loaded = load_model(source, attn_implementation="sdpa")
    net = loaded.model
    ids = action_token_ids(loaded.tokenizer, pcfg.n_bins)
    action_ids = torch.tensor(ids)
    encoder = _Encoder(loaded, pcfg, ids)
    sampler = ContextSampler(records, pcfg, cfg)
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0

    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * frac)))

    def max_window(step: int) -> int:
        if cfg.window_curriculum_steps <= 0:
            return cfg.context_steps
        frac = min(1.0, max(0, step - cfg.single_frame_warmup_steps) / cfg.window_curriculum_steps)
        return int(round(1 + (cfg.context_steps - 1) * frac))

    losses, window = [], []
    bar = tqdm(range(cfg.steps), desc="train", disable=not progress, dynamic_ncols=True)
    for step in bar:
        samples = [sampler.sample(rng, step < cfg.single_frame_warmup_steps or rng.random() < cfg.single_frame_prob,
                                  max_window(step)) for _ in range(cfg.batch_size)]
        batch = build_batch(loaded, encoder, samples, records, pad_id, cfg.decision_weight)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = action_loss(net, batch, action_ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        window.append(float(loss.item()))
        if len(window) == cfg.log_every or step == cfg.steps - 1:
            losses.append(float(np.mean(window)))
            window = []
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    net.eval()
    seconds = time.perf_counter() - t_start
    out.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        net.save_pretrained(out, safe_serialization=True)
    loaded.processor.save_pretrained(out)
    info_src = Path(loaded.path) / "aura_ros_model.json"
    if info_src.is_file():
        (out / "aura_ros_model.json").write_text(info_src.read_text())
    result = TrainResult(out_dir=out, losses=losses, first_loss=losses[0], final_loss=losses[-1], seconds=seconds,
                         config=cfg, n_episodes=len(records))
    (out / TRAIN_INFO_FILE).write_text(json.dumps({
        "train_config": asdict(cfg), "episodes": len(records), "seconds": round(seconds, 1),
        "losses": [round(x, 5) for x in losses], "threads": torch.get_num_threads(),
        "source_model": f"embedded default architecture (random init, seed {init_seed})" if model is None
        else str(model)}, indent=2) + "\n")
    if model is None:
        import shutil

        shutil.rmtree(source, ignore_errors=True)
    return result


# ---------------------------------------------------------------------- the default's recipe
DEFAULT_TASKS = (("cue_recall", 0.7), ("latent_fact", 0.3))
# The share of a stream's tasks (after its first) that recall the previous task's bin.
DEFAULT_CROSS_TASK = 0.25


def default_streams(n_streams: int = 50, seed: int = 0, max_distractor: int = 30, tasks=DEFAULT_TASKS,
                    tasks_per_stream: tuple[int, int] = (3, 6), cross_task: float = DEFAULT_CROSS_TASK,
                    cameras: tuple[str, ...] = ("top",)) -> list:
    """The expert streams the default policy is trained on: tasks back to back without a reset
    (the robot's endless episode), mixed by ``tasks`` weights, D drawn per task from
    0..``max_distractor``, a share of recall_previous tasks; seeds disjoint from the evaluation's
    (training streams use 10_000 + ...)."""
    from aura_ros.sim.tasks import expert_stream

    rng = np.random.default_rng([seed, 13])
    names = [t for t, _ in tasks]
    weights = np.array([w for _, w in tasks], dtype=float)
    weights /= weights.sum()
    out = []
    for i in range(n_streams):
        k = int(rng.integers(tasks_per_stream[0], tasks_per_stream[1] + 1))
        specs: list[tuple[str, int]] = []
        for j in range(k):
            d = int(rng.integers(0, max_distractor + 1))
            if j > 0 and specs[-1][0] != "recall_previous" and rng.random() < cross_task:
                specs.append(("recall_previous", d))
            else:
                specs.append((names[int(rng.choice(len(names), p=weights))], d))
        out.append(expert_stream(10_000 + seed * 100_000 + i, specs, cameras=cameras))
    return out


# ---------------------------------------------------------------------- the held-out check
def decision_accuracy(model: str | Path | None, records: list, policy_config: PolicyConfig | None = None,
                      recent_steps: int = TrainConfig.context_steps) -> dict[str, dict[str, float]]:
    """Per task: how often the model's greedy action equals the expert's, at the decision steps
    (the action differs from the step before) and at the steady ones, each decided from the
    context the action-gated cache holds there with ``recent_steps`` recent steps (teacher-forced:
    the expert's history). ``model`` None: the embedded default.

    A cheap check of what a training run learned, before any closed-loop run: a run that did not
    learn the recall shows chance at the decision steps. Once a latent fact has left the recent
    stretch the gated context lacks it (the action gate is blind to it), and the recall of it is
    then expected near chance.
    """
    from aura_ros.backends.transformers.loading import load_model
    from aura_ros.backends.transformers.vocab import action_token_ids

    pcfg = policy_config or PolicyConfig()
    loaded = load_model(model, attn_implementation="sdpa")
    ids = action_token_ids(loaded.tokenizer, pcfg.n_bins)
    encoder = _Encoder(loaded, pcfg, ids)
    action_ids = torch.tensor(ids)
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    tally: dict[str, dict[str, list[int]]] = {}
    loaded.model.eval()
    for e, rec in enumerate(records):
        acts = np.asarray(rec.actions)
        written = written_steps(acts, rec.events, pcfg)
        starts = _task_starts(rec)
        names = getattr(rec, "task_names", ()) or (getattr(rec, "task", "") or "episodes",)
        for t in range(len(acts)):
            j = _task_at(rec, t)
            per = tally.setdefault(names[j], {"decision": [0, 0], "steady": [0, 0]})
            kind = "decision" if t > 0 and not np.array_equal(acts[t], acts[t - 1]) else "steady"
            # A stream: the task before stays in the context (task_horizon 1), as the cache keeps it.
            context = gated_context(t, written, recent_steps, first_kept=int(starts[max(0, j - 1)]),
                                    max_steps=TrainConfig.max_context_steps)
            batch = build_batch(loaded, encoder, [(e, context)], records, pad_id)
            with torch.no_grad():
                logits = action_logits(loaded.model, batch, action_ids)
            n = len(encoder.step(e, t, rec)[1])  # the decided step's action tokens are the last n labels
            right = bool(torch.equal(logits[-n:].argmax(-1), batch["targets"][-n:]))
            per[kind][0] += int(right)
            per[kind][1] += 1
    return {task: {kind: (k / m if m else float("nan")) for kind, (k, m) in kinds.items()}
            for task, kinds in tally.items()}


def held_out_streams(n_streams: int = 4, distractor_steps: int = 20, tasks=DEFAULT_TASKS, n_tasks: int = 4,
                     cross_task: float = DEFAULT_CROSS_TASK, cameras: tuple[str, ...] = ("top",)) -> list:
    """Expert streams (tasks back to back, no reset) on evaluation seeds."""
    from aura_ros.sim.tasks import expert_stream, stream_specs

    mix = tuple((name, distractor_steps, w) for name, w in tasks)
    return [expert_stream(5_000 + i, stream_specs(5_000 + i, n_tasks, mix, cross_task), cameras=cameras)
            for i in range(n_streams)]


def held_out_episodes(n_per_task: int = 10, distractor_steps: int = 20, tasks=DEFAULT_TASKS) -> list:
    """Expert episodes of the memory tasks on evaluation seeds (disjoint from ``default_streams``)."""
    from aura_ros.sim.tasks import expert_episode

    return [expert_episode(name, 5_000 + i, distractor_steps) for name, _ in tasks for i in range(n_per_task)]
