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
    frame = SimScene(seed=2).render()
    state = np.zeros(len(PolicyConfig().joint_names))
    logits = []
    for image in (frame, np.zeros_like(frame)):
        _, ll = pair(gguf)
        logits.append(ll.step(Observation(image, state)).logits)
    assert float(np.abs(logits[0] - logits[1]).max()) > 10 * LOGIT_TOLERANCE


def test_snapshot_with_image_chunks_resumes_exactly(gguf, tmp_path):
    _, ll = pair(gguf)
    scene = SimScene(seed=3)
    for _ in range(12):
        ll.step(Observation(scene.render(), scene.joint_state()[1]))
    assert ll.stats().evictions_total > 0
    path = ll.save_memory(tmp_path / "images.snap")
    _, other = pair(gguf)
    other.load_memory(path)
    assert other.stats().kept_steps == ll.stats().kept_steps and other.step_index == ll.step_index
    obs = Observation(scene.render(), scene.joint_state()[1])
    a, b = ll.step(obs), other.step(obs)
    assert np.array_equal(a.bins, b.bins) and np.allclose(a.logits, b.logits, atol=1e-4)


def test_closed_loop_episodes_end_alike_on_both_backends(gguf, tmp_path):
    from aura_ros.bench import tasks

    model, mmproj = gguf
    # Episode 3's cue step looks like a return to the action baseline: only the frame tells the gate
    # otherwise, so the llama.cpp policy must hand the gate its frame embedding too.
    kw = dict(tasks=("cue_recall",), distractors=(20,), episodes=4, budget_tokens=CAPACITY, expert=False,
              progress=False, log=lambda s: None)
    hf = tasks.run(policies=("action_gate",), out=tmp_path / "hf", **kw)
    ll = tasks.run(policies=("action_gate", "h2o"), model=str(model), out=tmp_path / "ll",
                   model_kwargs=backend_options(str(model), mmproj=str(mmproj)), **kw)
    rows = {r["policy"]: r for r in ll["rows"]}
    gate_hf = next(r for r in hf["rows"] if r["policy"] == "action_gate")
    same = ("n", "successes", "cue_kept", "write_rate", "allocated_constant")
    assert gate_hf["n"] == 4 and {k: rows["action_gate"][k] for k in same} == {k: gate_hf[k] for k in same}
    assert rows["h2o"]["n"] == 0 and "attention weights" in rows["h2o"]["note"]


def test_export_refuses_what_it_cannot_write(tmp_path):
    from aura_ros.backends.transformers.tiny_models import build_tiny_vlm

    folder = build_tiny_vlm("idefics3", tmp_path / "idefics3")
    assert main(["export-gguf", "--model", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "model.gguf").exists()
    with pytest.raises(ValueError, match="GGUF models"):
        backend_options(None, mmproj="x.gguf")


def test_bench_scaling_runs_on_llama_cpp(gguf, tmp_path):
    """`bench scaling` on a GGUF: the fill decodes synthetic tokens, the physical limit cuts each
    step off with llama_memory_seq_rm and never evicts; the gate's evicting steps are seen."""
    from aura_ros.bench import scaling

    model, mmproj = gguf
    rows = scaling.run(budgets=(0.25,), policies=("physical_limit", "h2o", "action_gate"), min_steps=8, max_steps=8,
                       model=str(model), out=tmp_path, progress=lambda s: None,
                       model_kwargs=backend_options(str(model), mmproj=str(mmproj)))
    by = {r.policy: r for r in rows}
    assert set(by) == {"physical_limit", "action_gate"}  # H2O skipped: no attention weights in llama.cpp
    limit, gate = by["physical_limit"], by["action_gate"]
    assert limit.capacity_tokens == gate.capacity_tokens == 1024
    assert gate.evictions >= 2 and gate.quiet_ms > 0 and gate.evict_ms > 0 and limit.quiet_ms > 0
    assert all(r.allocated_bytes_first == r.allocated_bytes_last == 0.25 * 2**20 for r in rows)
