"""Image-only processors for the VLM families whose processor insists on a video processor.

Qwen2-VL (and its successors) and SmolVLM build a video processor in their processor, and every
video processor needs torchvision, which cannot be installed beside the CPU torch here (and a
robot policy consumes camera frames, never video files). These subclasses drop the video slot
and keep everything else of the original: the image processor, the tokenizer and the prompt
expansion of the image token. They save and reload with save_pretrained/from_pretrained.

``AutoProcessor.from_pretrained`` cannot know these classes: on such a folder it silently
returns only the tokenizer. ``load_processor`` detects that (and a folder whose processor needs
torchvision) and returns the image-only class instead, so callers always get an object that
processes images + text.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import ProcessorMixin, Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor, SmolVLMProcessor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without the video processor (no torchvision needed).

    ``get_attributes`` reads this ``__init__`` signature, so the saved processor has exactly an
    image processor and a tokenizer, and ``from_pretrained`` looks for nothing else.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2_5_VLProcessor without the video processor (same construction as Qwen2-VL's)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor without the video processor (same construction as Qwen2-VL's)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


class SmolVLMImageOnlyProcessor(SmolVLMProcessor):
    """SmolVLMProcessor without the video processor (no torchvision, no num2words).

    SmolVLMProcessor.__init__ also refuses to run without ``num2words``, which only words the
    frame count of a video prompt; with no video path that check does not apply, so this
    ``__init__`` sets the same attributes itself and skips it.
    """

    def __init__(self, image_processor, tokenizer, image_seq_len: int = 169, chat_template: str | None = None,
                 **kwargs):
        self.fake_image_token = getattr(tokenizer, "fake_image_token", "<fake_token_around_image>")
        self.image_token = getattr(tokenizer, "image_token", "<image>")
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", "<end_of_utterance>")
        self.global_image_token = getattr(tokenizer, "global_image_token", "<global-img>")
        self.image_seq_len = image_seq_len
        self.video_token = getattr(tokenizer, "video_token", "<video>")
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)


# processor_class as saved (or as the model family names it) -> the image-only class to use here.
# A folder saved by the original class loads into the image-only one (its video config is ignored).
_IMAGE_ONLY_CLASSES = (Qwen2VLImageOnlyProcessor, Qwen2_5_VLImageOnlyProcessor, Qwen3VLImageOnlyProcessor,
                       SmolVLMImageOnlyProcessor)
IMAGE_ONLY = {c.__name__: c for c in _IMAGE_ONLY_CLASSES} | {c.__mro__[1].__name__: c for c in _IMAGE_ONLY_CLASSES}
# config.json model_type -> image-only class, for folders that carry no processor_class at all.
IMAGE_ONLY_BY_MODEL_TYPE = {"qwen2_vl": Qwen2VLImageOnlyProcessor, "qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor,
                            "qwen3_vl": Qwen3VLImageOnlyProcessor, "smolvlm": SmolVLMImageOnlyProcessor}


def _read_json(path: str | Path, name: str, local_files_only: bool = True) -> dict | None:
    """A JSON file of a model folder or (cached) hub id, or None where it has none."""
    p = Path(path)
    if p.is_dir():
        f = p / name
    else:
        from transformers.utils.hub import cached_file

        found = cached_file(str(path), name, local_files_only=local_files_only,
                            _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)
        f = Path(found) if found else None
    if f is None or not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def saved_processor_class(path: str | Path, local_files_only: bool = True) -> str | None:
    """The processor_class a model declares (processor_config.json, then the older files)."""
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        cls = (_read_json(path, name, local_files_only) or {}).get("processor_class")
        if cls:
            return str(cls)
    return None


def is_multimodal_processor(obj) -> bool:
    """True for a processor that takes images (not a bare tokenizer)."""
    return isinstance(obj, ProcessorMixin) and getattr(obj, "image_processor", None) is not None


def load_processor(path: str | Path, local_files_only: bool = True, trust_remote_code: bool = False, **kwargs):
    """A processor for the model at ``path`` (a folder or hub id) that processes images + text.

    Known image-only cases (by the declared processor_class or config.json's model_type) use the
    image-only class directly; everything else goes through ``AutoProcessor``. If that yields no
    image processor (a bare tokenizer: AutoProcessor's silent fallback), a ValueError says so
    here, instead of the policy failing later on its first frame.
    """
    from transformers import AutoProcessor

    declared = saved_processor_class(path, local_files_only)
    model_type = (_read_json(path, "config.json", local_files_only) or {}).get("model_type")
    cls = IMAGE_ONLY.get(declared or "") or IMAGE_ONLY_BY_MODEL_TYPE.get(model_type or "")
    if cls is not None:
        return cls.from_pretrained(str(path), local_files_only=local_files_only, **kwargs)
    proc = AutoProcessor.from_pretrained(str(path), local_files_only=local_files_only,
                                         trust_remote_code=trust_remote_code, **kwargs)
    if not is_multimodal_processor(proc):
        raise ValueError(
            f"{path}: AutoProcessor returned {type(proc).__name__}, not a processor with an image processor "
            f"(processor_class {declared!r}, model_type {model_type!r}). The folder has no image processor "
            "config, or its processor class is not available in this transformers version.")
    return proc
