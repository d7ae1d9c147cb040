"""Step time of the tiny architectures (`python -m aura_ros.bench.step_time`): one observation +
action step through each tiny VLM on top of a cache of ``past_tokens``, timed by phase
(processor, observation forward, action tokens), to compare the architectures on this machine."""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch

from aura_ros.backends.transformers.loading import load_model
from aura_ros.backends.transformers.tiny_models import (
    ARCHS,
    build_tiny_vlm,
    model_inputs,
    observation_prompt,
    position_inputs,
    read_info,
    training_corpus,
)
from aura_ros.backends.transformers.vocab import action_token_ids


@torch.inference_mode()
def measure_step(path: str | Path, past_tokens: int = 1000, repeats: int = 30, n_action_tokens: int = 4,
                 frame_shape: tuple[int, int] = (480, 640), threads: int | None = 2) -> dict:
    """Time one control step of the model at ``path`` over a ``past_tokens`` DynamicCache past.

    A step: the processor on a camera frame (``frame_shape``, rgb8), one forward of the frame's
    image tokens plus the joint-state text, then ``n_action_tokens`` single-token forwards (the
    action). Each repeat starts from a copy of the same past, so the past stays ``past_tokens``
    long. Returns medians in ms, the image and chunk token counts, and the parameter count.
    """
    import statistics

    from PIL import Image
    from transformers import DynamicCache


    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(path)
    model = loaded.model
    info = read_info(path)
    act_ids = action_token_ids(loaded.tokenizer, info.n_action_bins if info else 256)
    rng = np.random.default_rng(0)
    frame = Image.fromarray(rng.integers(0, 256, (*frame_shape, 3), dtype=np.uint8))
    text = observation_prompt(loaded)
    inputs = model_inputs(loaded, frame, text)
    image_id = getattr(model.config, "image_token_id", None) or model.config.image_token_index
    # The past: ordinary robot text (no image or special tokens), as earlier steps would leave it.
    text_ids = loaded.tokenizer("\n".join(training_corpus()[:60]), add_special_tokens=False)["input_ids"]
    past_ids = torch.tensor(text_ids * (past_tokens // len(text_ids) + 1))[None, :past_tokens]
    base = DynamicCache(config=model.config)
    model(input_ids=past_ids, past_key_values=base, use_cache=True, **position_inputs(loaded, past_ids, 0))
    proc_ms, obs_ms, act_ms, step_ms = [], [], [], []
    for _ in range(repeats):
        cache = copy.deepcopy(base)  # outside the timed part
        t0 = time.perf_counter()
        x = model_inputs(loaded, frame, text, past_tokens)
        t1 = time.perf_counter()
        out = model(**x, past_key_values=cache, use_cache=True, logits_to_keep=1,
                    **position_inputs(loaded, x["input_ids"], past_tokens, x.get("image_grid_thw")))
        t2 = time.perf_counter()
        pos = past_tokens + x["input_ids"].shape[1] + 100  # any later position: timing only
        for i in range(n_action_tokens):
            logits = out.logits[0, -1, act_ids]
            tok = torch.tensor([[act_ids[int(logits.argmax())]]])
            extra = {"position_ids": torch.full((3, 1, 1), pos + i)} if loaded.is_mrope else {}
            out = model(input_ids=tok, past_key_values=cache, use_cache=True, logits_to_keep=1, **extra)
        t3 = time.perf_counter()
        proc_ms.append((t1 - t0) * 1e3)
        obs_ms.append((t2 - t1) * 1e3)
        act_ms.append((t3 - t2) * 1e3 / max(1, n_action_tokens))
        step_ms.append((t3 - t0) * 1e3)
    return dict(arch=loaded.arch, params=sum(p.numel() for p in model.parameters()),
                image_tokens=int((inputs["input_ids"] == image_id).sum()),
                chunk_tokens=int(inputs["input_ids"].shape[1]),
                processor_ms=round(statistics.median(proc_ms), 2), obs_forward_ms=round(statistics.median(obs_ms), 2),
                action_token_ms=round(statistics.median(act_ms), 2), step_ms=round(statistics.median(step_ms), 2),
                past_tokens=past_tokens, threads=torch.get_num_threads())


def main(argv: list[str] | None = None) -> int:
    """python -m aura_ros.backends.transformers.tiny_models [--archs a,b]: build each arch, print its step-time table.

    The archs are measured in interleaved rounds and each figure is the best round's median, so a
    burst of load from another process on a small machine does not decide the comparison.
    """
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--past", type=int, default=1000, help="DynamicCache past (tokens)")
    parser.add_argument("--repeats", type=int, default=30, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    archs = args.archs.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_tiny_vlm(archs[0], Path(tmp) / "warm-up")  # the first build also pays transformers' imports
        first_build_s = time.perf_counter() - t0
        build_s, paths = {}, {}
        for arch in archs:
            t0 = time.perf_counter()
            paths[arch] = build_tiny_vlm(arch, Path(tmp) / arch)
            build_s[arch] = time.perf_counter() - t0
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for arch in archs:
                r = measure_step(paths[arch], args.past, args.repeats, threads=args.threads)
                keys = ("processor_ms", "obs_forward_ms", "action_token_ms", "step_ms")
                best[arch] = r if arch not in best else best[arch] | {k: min(best[arch][k], r[k]) for k in keys}
    print(f"past {args.past} tokens, torch threads {args.threads}, best of {args.rounds} rounds x {args.repeats} steps "
          "(medians); a step = processor on a 480x640 frame + observation forward + 4 action-token forwards; "
          f"first build in a fresh process (imports included): {first_build_s:.2f} s")
    print("| arch | params | image tokens | chunk tokens | build s | processor ms | obs forward ms "
          "| action token ms | step ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in archs:
        r = best[arch]
        print(f"| {arch} | {r['params']:,} | {r['image_tokens']} | {r['chunk_tokens']} | {build_s[arch]:.2f} | "
              f"{r['processor_ms']} | {r['obs_forward_ms']} | {r['action_token_ms']} | {r['step_ms']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
