"""Load the policy: a Hugging Face image-text-to-text model (or a text-only causal LM) and its processor.

`Policy` is a small typed config object: LightningCLI builds it from YAML and the GRPO module calls
`load_model()` inside `configure_model`, so that large models are created where the strategy wants them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from transformers import ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

Dtype = Literal["float32", "bfloat16", "float16"]

# Tokens a sampled completion must never contain: the model would then expect image features for them.
VISION_SPECIAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the video processor.

    transformers' video processor imports torchvision, which is unusable beside a CPU-only torch; images
    need only the PIL image processor. Produces the same tensors as the stock processor for images.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """`AutoProcessor`, falling back to tokenizer + image processor when it returns a bare tokenizer.

    Without a working torchvision `AutoProcessor` silently returns only the tokenizer for Qwen2-VL
    models. A text-only model's tokenizer is returned as is.
    """
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    path = str(path)
    pixel_kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    try:
        processor = AutoProcessor.from_pretrained(path, **pixel_kwargs)
    except (ImportError, AttributeError, OSError, ValueError):
        processor = None
    if isinstance(processor, ProcessorMixin):
        tokenizer = processor.tokenizer
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if _has_image_processor(path):
            image_processor = AutoImageProcessor.from_pretrained(path, **pixel_kwargs)
            processor = ImageOnlyQwen2_5_VLProcessor(
                image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
            )
        else:
            processor = tokenizer
    # Generation batches prompts of different lengths: pad on the left so completions line up.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def _has_image_processor(path: str) -> bool:
    folder = Path(path)
    return (folder / "preprocessor_config.json").exists() or (folder / "processor_config.json").exists()


def tokenizer_of(processor) -> Any:
    """The tokenizer inside a processor (or the processor itself when it is a tokenizer)."""
    return getattr(processor, "tokenizer", processor)


LANGUAGE_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoRA:
    """Low-rank adapters on the policy (peft). The vision tower is left out unless `include_vision_tower`.

    Args:
        rank: adapter rank r.
        alpha: scaling numerator (the update is scaled by alpha / rank).
        dropout: dropout on the adapter input.
        target_modules: names of the linear layers to adapt (the attention and MLP projections by default).
        include_vision_tower: also adapt matching layers inside the vision encoder.
    """

    def __init__(
        self,
        rank: int = 16,
        alpha: int = 32,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        include_vision_tower: bool = False,
    ):
        if rank < 1:
            raise ValueError(f"policy.lora.rank must be >= 1, got {rank}")
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.target_modules = target_modules or list(LANGUAGE_LINEAR_LAYERS)
        self.include_vision_tower = include_vision_tower

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.target_modules,
            # Vision blocks reuse names such as gate_proj; keep them out by their module path.
            exclude_modules=None if self.include_vision_tower else r".*\bvisual\b.*",
            task_type="CAUSAL_LM",
        )


class Policy:
    """Where and how to load the policy model.

    Args:
        model_path: local folder of a Hugging Face model (Qwen2-VL, Qwen2.5-VL, or a text-only causal LM).
        dtype: parameter dtype to load in.
        attn_implementation: e.g. "sdpa", "eager", "flash_attention_2"; None keeps the model's default.
        gradient_checkpointing: recompute activations in backward to save memory.
        freeze_vision_tower: keep the vision encoder (and its merger) fixed.
        min_pixels: lower bound on image area fed to the image processor.
        max_pixels: upper bound on image area fed to the image processor.
        lora: train low-rank adapters instead of all weights; None trains the full model.
        load_in_4bit: QLoRA: load the language model's linear layers in 4-bit NF4 (bitsandbytes); needs `lora`.
    """

    def __init__(
        self,
        model_path: str,
        dtype: Dtype = "float32",
        attn_implementation: str | None = None,
        gradient_checkpointing: bool = False,
        freeze_vision_tower: bool = False,
        min_pixels: int = 3136,
        max_pixels: int = 1806336,
        lora: LoRA | None = None,
        load_in_4bit: bool = False,
    ):
        if min_pixels <= 0 or max_pixels < min_pixels:
            raise ValueError(f"policy: need 0 < min_pixels <= max_pixels, got {min_pixels} and {max_pixels}")
        if load_in_4bit and lora is None:
            raise ValueError("policy.load_in_4bit trains adapters on a frozen 4-bit model: set policy.lora too")
        self.model_path = model_path
        self.dtype = dtype
        self.attn_implementation = attn_implementation
        self.gradient_checkpointing = gradient_checkpointing
        self.freeze_vision_tower = freeze_vision_tower
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.lora = lora
        self.load_in_4bit = load_in_4bit

    def _check_path(self) -> None:
        if not Path(self.model_path).is_dir():
            raise FileNotFoundError(
                f"policy.model_path: {self.model_path!r} is not a folder. Give a local Hugging Face model folder; "
                "`perception-rl make-tiny-model DIR` writes a tiny one."
            )

    def prepare(self) -> None:
        """Called once per machine before loading (Lightning's prepare_data); nothing to do for a local folder."""

    def load_processor(self):
        self._check_path()
        return load_processor(self.model_path, self.min_pixels, self.max_pixels)

    def load_model(self, adapters: bool = True) -> torch.nn.Module:
        """Load the model (image-text-to-text if the config allows, else a causal LM) and prepare it for training.

        With `adapters=False` the plain base model comes back, in `dtype` and never quantised (for export).
        """
        quantise = self.load_in_4bit and adapters
        model = self._load_base(quantise)
        if quantise:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=self.gradient_checkpointing)
        if self.lora is not None and adapters:
            from peft import get_peft_model

            model = get_peft_model(model, self.lora.peft_config())
        model.train()  # from_pretrained returns eval mode; Lightning expects training mode
        if self.freeze_vision_tower:
            freeze_vision_tower(model)
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        return model

    def _load_base(self, quantise: bool) -> torch.nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        self._check_path()
        kwargs: dict[str, Any] = {"dtype": getattr(torch, self.dtype)}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        if quantise:
            kwargs["quantization_config"] = _nf4_config(getattr(torch, self.dtype))
        config = AutoConfig.from_pretrained(self.model_path)
        if type(config) in AutoModelForImageTextToText._model_mapping:
            return AutoModelForImageTextToText.from_pretrained(self.model_path, **kwargs)
        return AutoModelForCausalLM.from_pretrained(self.model_path, **kwargs)


def _nf4_config(compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype,
        # The vision encoder and the output head stay in full precision, as in QLoRA.
        llm_int8_skip_modules=[r".*\bvisual", "lm_head"],  # matched from the start of the module path
    )


def is_peft_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def _unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if is_peft_model(model) else model


def vision_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The vision encoder of a Qwen2(.5)-VL-style model, or None for a text-only model."""
    model = _unwrap_peft(model)
    for owner in (model, getattr(model, "model", None)):
        tower = getattr(owner, "visual", None)
        if tower is not None:
            return tower
    return None


def freeze_vision_tower(model: torch.nn.Module) -> None:
    tower = vision_tower(model)
    if tower is None:
        raise ValueError(f"policy.freeze_vision_tower: {type(model).__name__} has no vision tower")
    tower.requires_grad_(False)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of the language model, for sharding and wrap policies."""
    inner = getattr(_unwrap_peft(model), "model", model)
    language_model = getattr(inner, "language_model", inner)
    layers = getattr(language_model, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers on {type(model).__name__}")
    return list(layers)


def vision_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    tower = vision_tower(model)
    return list(getattr(tower, "blocks", [])) if tower is not None else []


def export_merged_adapters(policy: Policy, state: dict[str, torch.Tensor], path: Path) -> None:
    """Save trained adapters to `path/adapter` and the merged full model to `path`.

    The adapters are merged into a freshly loaded full-precision base (never into 4-bit weights, which
    would round the merge), so QLoRA and LoRA export the same way.
    """
    from peft import get_peft_model

    adapter_state = {k: v for k, v in state.items() if "lora_" in k}
    if not adapter_state:
        raise ValueError("export: the policy has LoRA enabled but its state holds no adapter weights")
    model = get_peft_model(policy.load_model(adapters=False), policy.lora.peft_config())
    missing = set(adapter_state) - set(model.state_dict())
    if missing:
        raise ValueError(f"export: adapter weights {sorted(missing)[:3]} have no place in the base model")
    model.load_state_dict(adapter_state, strict=False)
    model.save_pretrained(path / "adapter")
    model.merge_and_unload().save_pretrained(path)
