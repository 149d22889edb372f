"""Loading Qwen3-VL and its processor (hub id, local folder, or the tiny random model), LoRA and freezing.

One loading path serves every model: ``model='tiny'`` first writes a tiny random Qwen3-VL (a locally trained
byte-level BPE tokenizer, ~250k parameters) to a folder with ``save_pretrained``, then loads it with the same
``from_pretrained`` calls a hub id or a real checkpoint folder goes through. Nothing here downloads unless the
user names a hub id.

Without torchvision the stock ``Qwen3VLProcessor`` cannot be built (transformers type-checks its video
sub-processor, which needs torchvision); :class:`Qwen3VLImageOnlyProcessor` then gives the same text and image
handling with Qwen2-VL's PIL image processor. Videos are not supported on that path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from npo_lab.llm.config import LLMConfig
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.utils import is_torchvision_available

# ---- the processor without torchvision ------------------------------------------------------------------


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """``Qwen3VLProcessor`` without its video sub-processor (transformers derives the sub-processors from the
    ``__init__`` signature, so dropping ``video_processor`` is enough). Same chat template, image placeholder
    expansion and ``mm_token_type_ids`` as the stock processor; images and text only."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kw):
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kw,
        )


def _pil_image_processor_class() -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil


def load_processor(name: str, local_files_only: bool = False) -> Any:
    """The processor of a Qwen3-VL hub id or folder: ``AutoProcessor`` when torchvision works, otherwise the
    image-only processor built from the same folder's tokenizer, image-processor config and chat template."""
    kw = {"local_files_only": local_files_only}
    if is_torchvision_available():
        return AutoProcessor.from_pretrained(name, **kw)
    tokenizer = AutoTokenizer.from_pretrained(name, **kw)
    image_processor = _pil_image_processor_class().from_pretrained(name, **kw)
    template = getattr(tokenizer, "chat_template", None)
    if not template and Path(name, "chat_template.jinja").is_file():
        template = Path(name, "chat_template.jinja").read_text()
    if not template:
        raise ValueError(f"{name}: no chat template found (tokenizer_config.json or chat_template.jinja)")
    return Qwen3VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)


# ---- the tiny random model ----------------------------------------------------------------------------------

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
]
"""Qwen's special tokens used by the chat template (their ids follow the trained vocabulary)."""

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen's chat format for text and image parts (the real models ship their own, richer template)."""

_TOKENIZER_CORPUS = [
    "How many shapes are in the image? There are 3 shapes, so the answer is \\boxed{3}.",
    "What is the sum of the digits in the image? 4 + 7 = 11, the answer is \\boxed{11}.",
    "Reason briefly, then give the final answer in \\boxed{}.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27",
    "<think> count the circles, squares and triangles </think> system user assistant",
    "Solve for x: 2x + 4 = 10, so x = 3. The angle is 30 degrees; \\frac{1}{2} \\sqrt{3} \\pi",
]


def build_tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on a few strings (deterministic, no download), with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_config(tokenizer: Any, hidden: int = 64, layers: int = 2, tie: bool = False) -> Qwen3VLConfig:
    """A Qwen3-VL config small enough for CPU tests (2 text layers of width 64, a 2-block vision tower)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    head_dim = 16
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim,
        num_key_value_heads=max(1, hidden // head_dim // 2),
        head_dim=head_dim,
        max_position_embeddings=2048,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 1e4,
            "mrope_section": [2, 3, 3],
            "mrope_interleaved": True,
        },
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        eos_token_id=ids["<|im_end|>"],
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=hidden,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    )
    return Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )


def write_tiny_model(folder: str | Path, seed: int = 0, tie: bool = False) -> Path:
    """Write a tiny random Qwen3-VL (weights from ``seed``; ``tie``: lm_head shares the input embeddings, as in
    Qwen3-VL-2B/4B), its tokenizer and processor to ``folder``."""
    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    image_processor = _pil_image_processor_class()(
        patch_size=16,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64},  # a 64x64 image -> 4 image tokens
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Qwen3VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(tiny_config(tokenizer, tie=tie))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def resolve_model(cfg: LLMConfig) -> str:
    """The name ``from_pretrained`` reads: ``cfg.model`` itself, or for 'tiny' a folder written once per
    process and seed."""
    if cfg.model != "tiny":
        return cfg.model
    key = f"tiny-{cfg.tiny_seed}"
    if key not in _TINY:
        root = Path(cfg.scratch_dir) if cfg.scratch_dir else Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"npo_lab_{key}_", dir=root))
        _TINY[key] = str(write_tiny_model(folder, cfg.tiny_seed))
    return _TINY[key]


_TINY: dict[str, str] = {}


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_model(name: str, dtype: torch.dtype, attn_implementation: str = "sdpa") -> Any:
    """``AutoModelForImageTextToText.from_pretrained`` on a hub id or a folder (a LoRA adapter folder loads its
    base model and the adapter). Weights are read from safetensors only: a checkpoint that has only pickled
    ``.bin`` weights (which could run code when loaded) is refused."""
    local = Path(name).is_dir()
    try:
        return AutoModelForImageTextToText.from_pretrained(
            name, dtype=dtype, attn_implementation=attn_implementation, local_files_only=local, use_safetensors=True
        )
    except OSError as e:
        where = "folder" if local else "hub id"
        raise ValueError(f"llm.model: could not load {where} {name!r}: {e}") from e


def is_vision_param(name: str) -> bool:
    """Parameters of the vision tower and its merger (``model.visual.*``)."""
    return ".visual." in f".{name}"


def prepare_trainable(model: Any, cfg: LLMConfig) -> Any:
    """Apply ``freeze_vision``, LoRA (``lora_r > 0``, language model only) and gradient checkpointing.

    Returns the model to train (a peft ``PeftModel`` with LoRA)."""
    if cfg.lora_r > 0:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError as e:  # pragma: no cover - peft is in the [llm] extra
            raise ImportError("llm.lora_r > 0 needs peft: pip install 'npo-lab[llm]'") from e
        targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
        # a regex over module names: the named projections of the language model only
        pattern = r".*language_model.*\.(" + "|".join(targets) + r")$"
        # a trained vision tower is a "module to save": peft keeps a trainable copy and writes it with the adapter,
        # so an adapter checkpoint still holds every weight that training changes
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=pattern,
            modules_to_save=None if cfg.freeze_vision else ["visual"],
        )
        model = get_peft_model(model, lora)
    elif cfg.freeze_vision:
        for n, p in model.named_parameters():
            if is_vision_param(n):
                p.requires_grad_(False)
    if cfg.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if cfg.lora_r > 0:
            model.enable_input_require_grads()
    return model


def param_counts(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


__all__ = [
    "CHAT_TEMPLATE",
    "Qwen3VLImageOnlyProcessor",
    "build_tiny_tokenizer",
    "is_vision_param",
    "load_model",
    "load_processor",
    "param_counts",
    "prepare_trainable",
    "resolve_model",
    "tiny_config",
    "torch_dtype",
    "write_tiny_model",
]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
