"""Tiny VLMs of real architectures with random weights, built from configs.

No model hub and no pretrained vision tower are reachable here, yet the policy, the cache and the
ROS node must run the real path: processor -> model -> logits, save_pretrained/from_pretrained,
the real rotary embeddings (plain RoPE, Qwen2-VL's 3-D mrope, Gemma 3's sliding/full layers).
``build_tiny_vlm`` writes such a model: hidden 64, 2 decoder layers, a one-layer vision tower,
a byte-level BPE tokenizer trained on a few robot-ish strings (about 1k ids including the action
tokens), and the architecture's own processor with a tiny image size, so one camera frame costs a
small fixed number of image tokens (16 by default). The weights are random: the model runs, it does
not "see". Built once into a cache folder (``loading.ensure_default_model``), reloaded offline.

    path = build_tiny_vlm("llava", Path("/tmp/tiny-llava"))
    loaded = load_model(path)          # aura_ros.backends.transformers.loading
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from aura_ros.backends.transformers.store import quiet_progress
from aura_ros.backends.transformers.vocab import MARKER_TOKENS, action_token_ids, action_token_names

# Bump when the builder's output changes, so cached builds of an older layout are not reused.
BUILDER_VERSION = 1
INFO_FILE = "aura_ros_model.json"

ARCHS = ("llava", "idefics3", "smolvlm", "qwen2_vl", "gemma3", "paligemma")

# The decoder every tiny arch shares: small enough for > 100 forward passes a second on 2 cores,
# with 2 KV heads of 16 dims (512 bytes of fp32 KV per token over both layers).
HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
MAX_POSITIONS = 4096
# One vision layer, 32 wide: the tower only has to turn pixels into the right number of embeddings.
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
# Gemma 3 alternates sliding-window and full-attention layers; a window far below the cache size
# makes the sliding layers actually slide in tests.
GEMMA3_SLIDING_WINDOW = 16
BPE_VOCAB = 700  # the trained part (256 byte symbols + merges); specials and action tokens come on top

# Each arch's text-side special tokens, named as its processor expects them. ``extra`` become
# attributes of the tokenizer (tokenizer.image_token, ...), which the processors read.
_SPECIALS: dict[str, dict] = {
    "llama": dict(named=dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>"),
                  extra=dict(image_token="<image>"), add_bos=True),
    "idefics3": dict(named=dict(bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<pad>"),
                     extra=dict(image_token="<image>", fake_image_token="<fake_token_around_image>",
                                global_image_token="<global-img>", end_of_utterance_token="<end_of_utterance>",
                                video_token="<video>"),
                     add_bos=False),
    "qwen2_vl": dict(named=dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
                     extra=dict(image_token="<|image_pad|>", video_token="<|video_pad|>",
                                vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
                                im_start_token="<|im_start|>"),
                     add_bos=False),
    "gemma": dict(named=dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"),
                  extra=dict(image_token="<image_soft_token>", boi_token="<start_of_image>",
                             eoi_token="<end_of_image>"),
                  add_bos=True),
    "paligemma": dict(named=dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"),
                      extra=dict(image_token="<image>"), add_bos=False),
}
_TOKENIZER_FAMILY = {"llava": "llama", "idefics3": "idefics3", "smolvlm": "idefics3", "qwen2_vl": "qwen2_vl",
                     "gemma3": "gemma", "paligemma": "paligemma"}
# Frame side (pixels) and patch side per arch, chosen so a frame is DEFAULT_IMAGE_TOKENS tokens:
# LLaVA/PaliGemma (32/8)^2 = 16; Idefics3/SmolVLM (64/8)^2 / 2^2 (pixel shuffle) = 16;
# Qwen2-VL (32/4)^2 / 2^2 (spatial merge) = 16; Gemma 3 (32/4)^2 pooled to 4x4 = 16.
_IMAGE_GEOMETRY = {"llava": (32, 8), "paligemma": (32, 8), "idefics3": (64, 8), "smolvlm": (64, 8),
                   "qwen2_vl": (32, 4), "gemma3": (32, 4)}
DEFAULT_IMAGE_TOKENS = 16
# The patch grid's side must divide by this: Idefics3/SmolVLM pixel shuffle 2, Qwen2-VL merge 2,
# Gemma 3 pools to a 4 x 4 grid.
_GRID_MULTIPLE = {"llava": 1, "paligemma": 1, "idefics3": 2, "smolvlm": 2, "qwen2_vl": 2, "gemma3": 4}


@dataclass(frozen=True)
class TinyModelInfo:
    """What a build wrote, stored beside the weights (``aura_ros_model.json``)."""

    arch: str
    seed: int
    image_size: int
    patch_size: int
    image_tokens_per_frame: int
    n_action_bins: int
    vocab_size: int
    n_params: int
    builder_version: int = BUILDER_VERSION


def read_info(path: str | Path) -> TinyModelInfo | None:
    """The build info of a tiny model folder, or None for any other model folder."""
    f = Path(path) / INFO_FILE
    if not f.is_file():
        return None
    data = json.loads(f.read_text())
    return TinyModelInfo(**{k: data[k] for k in TinyModelInfo.__dataclass_fields__ if k in data})


def training_corpus() -> list[str]:
    """Robot-ish text for the BPE: the prompts, joint-state lines and instructions the policy writes."""
    joints = ("shoulder", "elbow", "wrist", "gripper", "base", "lift", "arm", "head", "joint")
    objects = ("red block", "blue cup", "green ball", "yellow box", "pink apple", "bin", "table", "drawer",
               "shelf", "door", "cabinet", "plate", "sponge", "bowl")
    verbs = ("pick up", "put", "place", "move", "open", "close", "push", "pull", "turn", "go to", "stack",
             "wipe", "grasp", "release", "lift", "drop")
    lines = ["You are a robot policy. Follow the instruction. Output one action per step.",
             "Instruction: pick up the red block and put it in the bin",
             "The robot sees the camera frame and the joint state, then outputs an action.",
             "step observation state action gripper open closed left right forward back up down"]
    for i, v in enumerate(verbs):
        for j, o in enumerate(objects):
            lines.append(f"Instruction: {v} the {o} and then {verbs[(i + j) % len(verbs)]} the "
                         f"{objects[(i * 3 + j) % len(objects)]}")
    for k in range(300):
        # Deterministic pseudo-random joint values (no RNG: the corpus must not depend on a seed).
        vals = [math.sin(0.37 * k + 1.3 * n) * (3.0 if n % 2 == 0 else 1.0) for n in range(4)]
        names = [joints[(k + n) % len(joints)] for n in range(4)]
        lines.append(" ".join(f"{n} {v:.2f}" for n, v in zip(names, vals)))
    return lines


def train_tokenizer(arch: str, n_action_bins: int = 256, bpe_vocab: int = BPE_VOCAB):
    """A byte-level BPE (``tokenizers``) for ``arch``, wrapped in PreTrainedTokenizerFast.

    Contains the arch's special tokens, the observation markers and ``n_action_bins`` action
    tokens, all special (one id each); the action tokens are added last, as one contiguous block.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    fam = _SPECIALS[_TOKENIZER_FAMILY[arch]]
    named: dict[str, str] = fam["named"]
    extra: dict[str, str] = fam["extra"]
    base_specials = list(dict.fromkeys(list(named.values()) + list(extra.values())))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=bpe_vocab + len(base_specials), special_tokens=base_specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(training_corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, add_bos_token=fam["add_bos"], add_eos_token=False,
                                  model_max_length=MAX_POSITIONS, extra_special_tokens=dict(extra), **named)
    # Markers first, then the action block, so the action ids are contiguous and last.
    tok.add_special_tokens({"extra_special_tokens": list(MARKER_TOKENS) + action_token_names(n_action_bins)},
                           replace_extra_special_tokens=False)
    ids = action_token_ids(tok, n_action_bins)
    if ids != list(range(ids[0], ids[0] + n_action_bins)):
        raise RuntimeError("action tokens did not get contiguous ids")  # a tokenizers change; fail loudly
    return tok


def _llama_text(vocab: int, tok) -> dict:
    return dict(model_type="llama", vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                max_position_embeddings=MAX_POSITIONS, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, tie_word_embeddings=False)


def _siglip(image_size: int, patch_size: int) -> dict:
    return dict(model_type="siglip_vision_model", image_size=image_size, patch_size=patch_size, **VISION)


def _build(arch: str, tok, image_size: int, patch_size: int):
    """(model, processor, image tokens per frame) for ``arch``, with random weights."""
    import transformers as tf

    vocab = len(tok)
    if arch == "llava":
        cfg = tf.LlavaConfig(vision_config=_siglip(image_size, patch_size), text_config=_llama_text(vocab, tok),
                             image_token_index=tok.convert_tokens_to_ids("<image>"),
                             vision_feature_select_strategy="full", vision_feature_layer=-1,
                             image_seq_length=(image_size // patch_size) ** 2)
        model = tf.LlavaForConditionalGeneration(cfg)
        improc = tf.SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
        # SigLIP has no CLS token: every patch is an image token ("full" selection, nothing added).
        proc = tf.LlavaProcessor(image_processor=improc, tokenizer=tok, patch_size=patch_size,
                                 vision_feature_select_strategy="full", num_additional_image_tokens=0)
        return model, proc, (image_size // patch_size) ** 2
    if arch in ("idefics3", "smolvlm"):
        scale = 2
        seq = (image_size // patch_size) ** 2 // scale ** 2
        vision = dict(image_size=image_size, patch_size=patch_size, **VISION)
        text = _llama_text(vocab, tok)
        image_kw = dict(do_image_splitting=False, size={"longest_edge": image_size},
                        max_image_size={"longest_edge": image_size})
        if arch == "idefics3":
            cfg = tf.Idefics3Config(vision_config=vision, text_config=text, scale_factor=scale,
                                    image_token_id=tok.convert_tokens_to_ids("<image>"))
            model = tf.Idefics3ForConditionalGeneration(cfg)
            proc = tf.Idefics3Processor(image_processor=tf.Idefics3ImageProcessorPil(**image_kw), tokenizer=tok,
                                        image_seq_len=seq)
        else:
            from aura_ros.backends.transformers.processors import SmolVLMImageOnlyProcessor

            cfg = tf.SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=scale,
                                   image_token_id=tok.convert_tokens_to_ids("<image>"))
            model = tf.SmolVLMForConditionalGeneration(cfg)
            proc = SmolVLMImageOnlyProcessor(image_processor=tf.SmolVLMImageProcessorPil(**image_kw),
                                             tokenizer=tok, image_seq_len=seq)
        return model, proc, seq
    if arch == "qwen2_vl":
        from aura_ros.backends.transformers.processors import Qwen2VLImageOnlyProcessor

        merge = 2
        text = dict(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                    num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=MAX_POSITIONS,
                    bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                    # t/h/w bands of the rotary half-dim (8 = HEAD_DIM / 2), as Qwen2-VL's [16, 24, 24] of 64
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
        vision = dict(depth=VISION["num_hidden_layers"], embed_dim=VISION["hidden_size"], hidden_size=HIDDEN,
                      num_heads=VISION["num_attention_heads"], mlp_ratio=2, patch_size=patch_size,
                      spatial_merge_size=merge, temporal_patch_size=1, in_channels=3)
        cfg = tf.Qwen2VLConfig(text_config=text, vision_config=vision,
                               image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
        model = tf.Qwen2VLForConditionalGeneration(cfg)
        # min = max pixels: every square frame is resized to image_size^2 (other aspect ratios get a
        # fixed count per camera resolution, rounded to the patch * merge grid).
        pixels = image_size * image_size
        improc = tf.Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=merge, temporal_patch_size=1,
                                             size={"shortest_edge": pixels, "longest_edge": pixels})
        proc = Qwen2VLImageOnlyProcessor(image_processor=improc, tokenizer=tok)
        return model, proc, (image_size // patch_size) ** 2 // merge ** 2
    if arch == "gemma3":
        tokens = DEFAULT_IMAGE_TOKENS  # the patch grid is average-pooled to 4 x 4, whatever the frame size
        text = dict(model_type="gemma3_text", vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                    num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                    head_dim=HEAD_DIM, sliding_window=GEMMA3_SLIDING_WINDOW,
                    layer_types=["sliding_attention", "full_attention"], max_position_embeddings=MAX_POSITIONS,
                    bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        cfg = tf.Gemma3Config(text_config=text, vision_config=_siglip(image_size, patch_size),
                              mm_tokens_per_image=tokens, boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                              eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
                              image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"))
        model = tf.Gemma3ForConditionalGeneration(cfg)
        # Gemma 3 initialises its image projection to zeros (pretrained weights replace it): left so,
        # the random model would ignore every frame. Scaled so a projected image token has about
        # the size of a (sqrt(hidden)-scaled) text embedding.
        with torch.no_grad():
            proj = model.model.multi_modal_projector.mm_input_projection_weight
            proj.normal_(0.0, 1.0 / math.sqrt(proj.shape[0]))
        improc = tf.Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
        proc = tf.Gemma3Processor(image_processor=improc, tokenizer=tok, image_seq_length=tokens)
        return model, proc, tokens
    if arch == "paligemma":
        seq = (image_size // patch_size) ** 2
        improc = tf.SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
        improc.image_seq_length = seq
        # The processor adds PaliGemma's location/segmentation tokens to the tokenizer; the model's
        # vocabulary is sized after that, so every id the tokenizer can produce has an embedding.
        proc = tf.PaliGemmaProcessor(image_processor=improc, tokenizer=tok)
        vocab = len(proc.tokenizer)
        text = dict(model_type="gemma", vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                    num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                    head_dim=HEAD_DIM, max_position_embeddings=MAX_POSITIONS, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        cfg = tf.PaliGemmaConfig(vision_config=dict(_siglip(image_size, patch_size), projection_dim=HIDDEN),
                                 text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                                 projection_dim=HIDDEN, hidden_size=HIDDEN, vocab_size=vocab)
        model = tf.PaliGemmaForConditionalGeneration(cfg)
        return model, proc, seq
    raise ValueError(f"unknown tiny arch {arch!r}; choose one of {ARCHS}")


def build_tiny_vlm(arch: str, out_dir: str | Path, seed: int = 0, image_size: int | None = None,
                   n_action_bins: int = 256, patch_size: int | None = None) -> Path:
    """Build a tiny ``arch`` VLM with random weights and save it (safetensors) to ``out_dir``.

    ``image_size``/``patch_size`` default to a geometry where one frame costs 16 image tokens; a
    larger ``image_size`` costs more tokens (Gemma 3 excepted: it pools every frame to 16).
    The folder reloads offline with ``from_pretrained`` (or ``loading.load_model``). Returns it.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; choose one of {ARCHS}")
    if n_action_bins < 2:
        raise ValueError(f"n_action_bins must be >= 2, got {n_action_bins}")
    default_size, default_patch = _IMAGE_GEOMETRY[arch]
    image_size = int(image_size or default_size)
    patch_size = int(patch_size or default_patch)
    if image_size % patch_size or image_size < patch_size:
        raise ValueError(f"image_size {image_size} must be a positive multiple of patch_size {patch_size}")
    if (image_size // patch_size) % _GRID_MULTIPLE[arch]:
        raise ValueError(f"{arch}: image_size / patch_size ({image_size // patch_size}) must be a multiple of "
                         f"{_GRID_MULTIPLE[arch]}")
    out = Path(out_dir)
    t0 = time.perf_counter()
    tok = train_tokenizer(arch, n_action_bins)
    # The seed fixes the weights (torch's initialisers); the tokenizer is deterministic anyway.
    torch.manual_seed(seed)
    model, proc, n_image_tokens = _build(arch, tok, image_size, patch_size)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    with quiet_progress():
        model.save_pretrained(out, safe_serialization=True)
    proc.save_pretrained(out)
    info = TinyModelInfo(arch=arch, seed=seed, image_size=image_size, patch_size=patch_size,
                         image_tokens_per_frame=n_image_tokens, n_action_bins=n_action_bins,
                         vocab_size=len(proc.tokenizer), n_params=sum(p.numel() for p in model.parameters()))
    (out / INFO_FILE).write_text(json.dumps(asdict(info) | {"build_seconds": round(time.perf_counter() - t0, 3)},
                                            indent=2) + "\n")
    return out


def observation_prompt(loaded, state_text: str = "shoulder 0.12 elbow -1.30 wrist 0.50 gripper 1.00") -> str:
    """One control step's text as the policy writes it: markers around the frame and the joint state."""
    image = "<|vision_start|><|image_pad|><|vision_end|>" if loaded.is_mrope else loaded.processor.image_token
    return f"<obs>{image}<state>{state_text}<act>"


def model_inputs(loaded, image, text: str, past_tokens: int = 0) -> dict:
    """processor(text, image) -> the tensors the model's forward takes (one sequence, no padding).

    Drops what a cached step must not pass: the attention mask (the cache decides what is
    attended), token-type bookkeeping of the mrope processors, and PaliGemma's training labels.
    Gemma 3's ``token_type_ids`` (its bidirectional attention inside an image) are indexed by
    absolute position in the sequence, so after ``past_tokens`` cached tokens they are left-padded
    with text type (0); chunk-only ids would put the image block at the wrong keys.
    """
    images = [image] if loaded.is_mrope else [[image]]
    inputs = dict(loaded.processor(text=[text], images=images, return_tensors="pt", add_special_tokens=False))
    for key in ("attention_mask", "mm_token_type_ids", "labels"):
        inputs.pop(key, None)
    tti = inputs.get("token_type_ids")
    if tti is not None and past_tokens:
        inputs["token_type_ids"] = torch.cat([tti.new_zeros(1, past_tokens), tti], dim=1)
    return inputs


def position_inputs(loaded, input_ids: torch.Tensor, start: int, grid=None) -> dict:
    """Explicit 3-D mrope positions for Qwen2-VL (a cached chunk needs them), nothing otherwise."""
    from aura_ros.backends.transformers.positions import mrope_positions

    if not loaded.is_mrope:
        return {}
    cfg = loaded.model.config
    pos, _ = mrope_positions(input_ids, start, cfg.image_token_id, grid, cfg.vision_config.spatial_merge_size)
    return {"position_ids": pos}
