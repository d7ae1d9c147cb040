"""The MLX store on real MLX with the shipped default's weights.

- The KV arrays' bytes are identical at every step of a long run (500 steps here; `aura-ros`'s soak
  numbers are in the report) and positions stay below the capacity.
- Re-rotation: a kept key rotated by its position delta equals the key the model computes at the
  new position (layer 0, whose keys depend on the token alone), and rotating twice composes.
- What MLX cannot run is refused with the reason.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers.mlx_backend import require_mlx

mx = require_mlx()

from aura_ros.backends.mlx import REFUSES  # noqa: E402
from aura_ros.backends.mlx.kvstore import MLXKVStore, rotate  # noqa: E402
from aura_ros.backends.mlx.model import UnsupportedModelError  # noqa: E402
from aura_ros.backends.mlx.policy import DEFAULT_MODEL_DIR, MLXPolicy  # noqa: E402
from aura_ros.core.config import PolicyConfig  # noqa: E402
from aura_ros.core.registry import make_policy, unsupported  # noqa: E402
from aura_ros.core.types import Observation  # noqa: E402
from aura_ros.memory import Kind  # noqa: E402
from aura_ros.memory import make_policy as memory_policy  # noqa: E402


def frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)


def state(i: int) -> np.ndarray:
    return np.array([np.sin(i / 3), 0.1 * (i % 7), -0.2, float(i % 10 < 5)])


@pytest.fixture(scope="module")
def policy() -> MLXPolicy:
    return make_policy(None, PolicyConfig(budget_bytes=64 * 1024, recent_steps=2), backend="mlx",
                       instruction="stack the red cube on the blue one")


def test_kv_bytes_constant_and_positions_bounded_over_a_long_run():
    p = make_policy(None, PolicyConfig(budget_bytes=128 * 1024, recent_steps=4), backend="mlx",
                    instruction="stack the cubes")
    allocated, max_pos, active = set(), 0, []
    for t in range(500):
        st = p.step(Observation(frame(t % 50), state(t))).stats
        allocated.add(st.allocated_bytes)
        max_pos = max(max_pos, st.max_position)
        assert st.used_tokens <= st.capacity_tokens
        if t >= 100:
            active.append(mx.get_active_memory())
    assert allocated == {2 * 2 * 2 * 256 * 16 * 4}  # 2 layers x (K, V) x 2 heads x 256 slots x 16 dims x fp32
    assert max_pos < st.capacity_tokens and st.evictions_total > 100
    # MLX's own allocator: no growth after warm-up (arrays are replaced in place, nothing accumulates).
    assert max(active) - min(active) <= 1 << 20, (min(active), max(active))


def test_rotation_composes_and_matches_mlx_lm_rope(policy):
    rope = policy.model.layers[0].self_attn.rope  # the module mlx-lm's attention applies
    k = mx.random.normal((1, 2, 5, 16), key=mx.random.key(0))
    at7 = rope(k, offset=7)  # positions 7..11
    at3 = rope(k, offset=3)  # positions 3..7
    moved = rotate(at7, np.full(5, -4), policy.inv_freq)
    assert float(mx.abs(moved - at3).max()) < 1e-5
    back = rotate(moved, np.full(5, 4), policy.inv_freq)
    assert float(mx.abs(back - at7).max()) < 1e-5
    # The check has teeth: no rotation, or an interleaved pairing, is far off.
    assert float(mx.abs(at7 - at3).max()) > 0.1
    interleaved = mx.fast.rope(at7, 16, traditional=True, base=policy.model.text_args.rope_theta, scale=1.0,
                               offset=-4)
    assert float(mx.abs(interleaved - at3).max()) > 0.1


def test_eviction_rerotates_kept_keys_to_their_new_positions(policy):
    """Fill a store with [pinned][step 0][step 1], evict step 0; step 1's layer-0 keys must be what a
    fresh forward of [pinned][step 1] writes at their new positions (layer 0's keys depend on the
    token alone; deeper layers saw step 0 and are not comparable)."""
    m = policy.model
    pinned = policy.encode_instruction("stack the cubes")
    obs = [policy.encode_observation(frame(i), state(i)) for i in range(2)]
    capacity_tokens = 256

    def store():
        return MLXKVStore(policy.layout, capacity_tokens * policy.layout.bytes_per_token, policy.inv_freq,
                          policy=memory_policy("sliding_window"), recent_steps=0)

    def write(s, ids, pixels, kind, step):
        embeds, _ = m.embed(ids, pixels)
        logits = m.last_logits(embeds, s.layers)
        mx.eval(logits, *s.arrays())
        s.commit(kind, step)
        return logits

    a = store()
    write(a, pinned, None, Kind.PINNED, -1)
    write(a, *obs[0], Kind.OBSERVATION, 0)
    write(a, *obs[1], Kind.OBSERVATION, 1)
    a._compact([seg for seg in a.table.segments if seg.step != 0])
    b = store()
    write(b, pinned, None, Kind.PINNED, -1)
    write(b, *obs[1], Kind.OBSERVATION, 1)
    n = b.used_tokens
    assert a.used_tokens == n and a.next_position == b.next_position == n
    delta = float(mx.abs(a.keys[0][:, :, :n] - b.keys[0][:, :, :n]).max())
    assert delta < 1e-5, delta
    assert float(mx.abs(a.values[0][:, :, :n] - b.values[0][:, :, :n]).max()) < 1e-6
    # Without the re-rotation the moved keys sit at their old positions: far off.
    gap = obs[0][0].size
    stale = a.keys[0][:, :, pinned.size: n]
    stale = rotate(stale, np.full(n - pinned.size, gap), policy.inv_freq)
    assert float(mx.abs(stale - b.keys[0][:, :, pinned.size: n]).max()) > 0.1


@pytest.mark.parametrize("eviction", sorted(REFUSES))
def test_refused_policies_say_why(eviction):
    assert unsupported(None, [eviction], backend="mlx") == {eviction: REFUSES[eviction]}
    with pytest.raises(ValueError, match="attention" if eviction == "h2o" else "fixed-slot"):
        make_policy(None, PolicyConfig(eviction=eviction), backend="mlx")


def _folder_with(tmp_path, edit) -> str:
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.mark.parametrize("edit,why", [
    (lambda c: c.update(model_type="qwen2_vl"), "mrope"),
    (lambda c: c.update(model_type="idefics3"), "Llava"),
    (lambda c: c["vision_config"].update(model_type="clip_vision_model"), "SigLIP"),
    (lambda c: c["text_config"].update(model_type="gemma3_text"), "Llama decoders only"),
    (lambda c: c["text_config"].update(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}),
     "1-D RoPE only"),
])
def test_unsupported_models_are_refused_with_the_reason(tmp_path, edit, why):
    with pytest.raises(UnsupportedModelError, match=why):
        make_policy(_folder_with(tmp_path, edit), PolicyConfig(), backend="mlx")


def test_a_missing_folder_is_refused():
    with pytest.raises(FileNotFoundError, match="local folders only"):
        make_policy("/nonexistent/model", PolicyConfig(), backend="mlx")
