"""The embedded trained policy, exported as a GGUF pair (`aura-ros export-gguf`), on the llama.cpp
backend with its frames through libmtmd: the same policy as on transformers.

- The GGUF vocabulary tokenizes the prompt exactly as the transformers tokenizer does, control
  tokens included (and not parsed from an instruction).
- Step by step, through evictions and the shifts that close their gaps, the llama.cpp policy picks
  the same action bins as the transformers policy at the same token capacity, and its action
  logits stay within a stated tolerance of transformers' (f16 KV cache against fp32, ggml's GELU
  table, llama.cpp's own resize of the frame). The frame reaches the model: another frame moves
  the logits far more than the tolerance.
- A snapshot taken with image chunks in the cache resumes exactly.
- Closed loop: the memory task's episodes end identically on both backends; what llama.cpp cannot
  run (H2O, the unbounded reference) is reported as skipped with the reason.
- Models outside the exporter's scope are refused by name.
"""
from __future__ import annotations

import numpy as np
import pytest
from helpers.llama_backend import require_llama_cpp

require_llama_cpp()

from aura_ros.core.config import PolicyConfig  # noqa: E402
from aura_ros.core.registry import backend_options, make_policy  # noqa: E402
from aura_ros.core.types import Observation  # noqa: E402
from aura_ros.sim.scene import SimScene  # noqa: E402
from aura_ros.tools.cli import main  # noqa: E402

INSTRUCTION = "pick up the red block and put it in the bin"
# |logit difference| over the action tokens between the backends, any step. Measured on 80 steps of
# the sim's 96x96 frames through evictions: 0.004 (0.02 with 32x32 frames, which llama.cpp does not
# resize). Another frame at the same state moves the logits by ~2.
LOGIT_TOLERANCE = 0.05
CAPACITY = 256  # tokens: llama.cpp's context unit; ~39 tokens a step, so evictions from step ~6
FP32_BYTES_PER_TOKEN = 2 * 2 * 2 * 16 * 4  # layers x (K, V) x KV heads x head dim x 4 bytes
F16_BYTES_PER_TOKEN = FP32_BYTES_PER_TOKEN // 2


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    assert main(["export-gguf", "--out", str(out)]) == 0
    return out / "model.gguf", out / "mmproj.gguf"


def pair(gguf, capacity: int = CAPACITY, eviction: str = "action_gate"):
    model, mmproj = gguf
    hf = make_policy(None, PolicyConfig(budget_bytes=capacity * FP32_BYTES_PER_TOKEN, eviction=eviction),
                     instruction=INSTRUCTION)
    ll = make_policy(str(model), PolicyConfig(budget_bytes=capacity * F16_BYTES_PER_TOKEN, eviction=eviction),
                     instruction=INSTRUCTION, **backend_options(str(model), mmproj=str(mmproj)))
    assert hf.stats().capacity_tokens == ll.stats().capacity_tokens == capacity
    return hf, ll


def test_vocabulary_tokenizes_as_transformers(gguf):
    from aura_ros.backends.llama_cpp.policy import LoadedGGUF
    from aura_ros.backends.transformers.loading import load_model

    tok = load_model(None).tokenizer
    g = LoadedGGUF(gguf[0])
    for text, special in (("You are a robot.\nInstruction: ", True), (INSTRUCTION + "\n", False),
                          ("<obs><state>j0 0.12 j1 -0.50 gripper 1.00<act>", True),
                          ("ignore that <act_3> and <obs>", False)):
        want = tok(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]
        assert g.tokenize(text, False, special) == want, text
    assert g.tokenize("x", True, True) == tok("x")["input_ids"]  # BOS as transformers adds it
    assert len(g.tokenize("<act_3>", False, True)) == 1 and len(g.tokenize("<act_3>", False, False)) > 1


def test_llama_cpp_policy_acts_as_the_transformers_policy_through_evictions(gguf):
    hf, ll = pair(gguf)
    assert ll.action_source == "<act_k> tokens of the vocabulary"
    scene = SimScene(seed=1)
    worst = 0.0
    for i in range(60):
        obs = Observation(scene.render(), scene.joint_state()[1])
        a, b = hf.step(obs), ll.step(obs)
        assert np.array_equal(a.bins, b.bins), f"step {i}: {a.bins.ravel()} != {b.bins.ravel()}"
        # The gate sees the same action and the same frame embedding (libmtmd's projector output).
        assert a.gate.written == b.gate.written and a.gate.returned == b.gate.returned
        assert abs(a.gate.value - b.gate.value) < 0.01 and abs(a.gate.novelty - b.gate.novelty) < 0.01
        assert (a.stats.used_tokens, a.stats.evictions_total) == (b.stats.used_tokens, b.stats.evictions_total)
        worst = max(worst, float(np.abs(a.logits - b.logits).max()))
        scene.apply_position_command(a.first, 0.1)
    assert ll.stats().evictions_total > 20 and ll.stats().max_position < CAPACITY
    assert worst < LOGIT_TOLERANCE, worst


def test_the_frame_reaches_the_model(gguf):
    # What the frame changes in the first action's logits on llama.cpp is what it changes on
    # transformers (which surely reads it), and that change is far above the backends' tolerance:
    # a frame dropped on the way (libmtmd not used) would leave llama.cpp's logits unchanged.
    frame = SimScene(seed=2).render()
    state = np.zeros(len(PolicyConfig().joint_names))
    logits = {"hf": [], "ll": []}
    for image in (frame, np.zeros_like(frame)):
        hf, ll = pair(gguf)
        logits["hf"].append(hf.step(Observation(image, state)).logits)
        logits["ll"].append(ll.step(Observation(image, state)).logits)
    effect = {k: v[0] - v[1] for k, v in logits.items()}
    assert float(np.abs(effect["hf"]).max()) > 5 * LOGIT_TOLERANCE
    assert float(np.abs(effect["ll"] - effect["hf"]).max()) < 2 * LOGIT_TOLERANCE
