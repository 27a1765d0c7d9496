"""Write a tiny, randomly initialised Qwen2.5-VL (model, tokenizer, processor, chat template) to a folder.

Fully offline and takes a few seconds: the byte-level BPE tokenizer is trained in-process on a small
corpus, the special tokens follow Qwen2.5-VL's order, and the chat template is written here. The tests
train this model; nothing about it is meaningful except its shapes. (The demo's model is built from the
same parts and then warm-started: `perception_rl.warm_start`.)

    perception-rl make-tiny-model .cache/tiny-qwen2_5_vl
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch

from perception_rl.policy import Dtype, Policy

# Same order as Qwen2.5-VL, so that a tokenizer built here has the same relative layout of specials.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]

# Qwen2 pre-tokenisation regex (splits letters, single digits, punctuation runs and whitespace).
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# ChatML with Qwen2.5-VL's vision markers; a default system turn when the conversation has none.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Find the value of x. Give the answer as a number.",
    "In triangle ABC, AB = 12, BC = 5 and angle B is 90 degrees. Find AC.",
    "How many circles are in the image? How many squares? Which colour is the largest shape?",
    "<think>\nThe figure shows a right triangle with legs 3 and 4, so the hypotenuse is 5.\n</think>\n"
    "<answer>\nThe answer is \\boxed{5}\n</answer>",
    "Think step by step inside <think> </think> tags, then give the final answer inside <answer> </answer>"
    " tags with the result in \\boxed{}.",
    "red green blue yellow purple orange black white circle square triangle line point angle arc radius",
    "0 1 2 3 4 5 6 7 8 9 10 20 30 45 60 90 180 360 + - * / = ( ) [ ] { } , . : ; ? ! ' \" \\frac \\sqrt \\pi",
    "Choices: A. 30 B. 40 C. 60 D. 80. The correct option is D.",
]


def build_tokenizer(vocab_size: int = 512, corpus: list[str] | None = None):
    """Train a byte-level BPE in-process and wrap it as a `Qwen2Tokenizer` with Qwen2.5-VL specials.

    `corpus` replaces the built-in one (a task's own sentences make its words single tokens).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator((corpus or _CORPUS) * 4, trainer)
    model = bpe.to_str()
    import json

    spec = json.loads(model)["model"]
    # tokenizers >= 0.23 needs merges as tuples, not "a b" strings.
    merges = [tuple(m) if not isinstance(m, str) else tuple(m.split(" ")) for m in spec["merges"]]
    # eos must start as <|endoftext|> so that the specials below are registered in Qwen's order.
    tokenizer = Qwen2Tokenizer(
        vocab=spec["vocab"], merges=merges, unk_token=None, bos_token=None,
        eos_token="<|endoftext|>", pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]}
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_processor(tokenizer, min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 64):
    """An image-only Qwen2.5-VL processor around `tokenizer` (no torchvision needed)."""
    try:  # the PIL backend needs no torchvision (transformers >= 5.19)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as ImageProcessor

    from perception_rl.policy import ImageOnlyQwen2_5_VLProcessor  # noqa: PLC0415

    image_processor = ImageProcessor(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    return ImageOnlyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def build_model(
    tokenizer, hidden_size: int = 64, num_layers: int = 2, seed: int = 0, vision_hidden_size: int = 32,
    tie_word_embeddings: bool = False,
):
    """A randomly initialised Qwen2.5-VL whose vocabulary covers `tokenizer` (4 text heads, 2 vision heads)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    heads = 4
    head_dim = hidden_size // heads
    # mrope sections split head_dim/2 rotary frequencies over (time, height, width).
    half = head_dim // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    vocab = (len(tokenizer) + 63) // 64 * 64
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=2,
            max_position_embeddings=4096, rope_scaling={"type": "mrope", "mrope_section": section},
            rope_theta=10000.0, bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=2, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size, num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
        ),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids("<|im_end|>")
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    return model


def write_tiny_qwen2_5_vl(
    output_dir: str | Path, hidden_size: int = 64, num_layers: int = 2, seed: int = 0, vision_hidden_size: int = 32
) -> Path:
    """Build the tiny model, tokenizer and processor and `save_pretrained` them into `output_dir`.

    hidden_size 256 and vision_hidden_size 128 give head dims of 64 (what vLLM and flash kernels need).
    """
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden_size, num_layers, seed, vision_hidden_size)
    return _save_whole(output_dir, model, build_processor(tokenizer), tokenizer)


def _save_whole(output_dir: str | Path, *parts) -> Path:
    """`save_pretrained` each part into a staging folder, then swap it in whole, so an interrupted write never
    leaves a folder that looks complete."""
    output_dir = Path(output_dir)
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    for part in parts:
        part.save_pretrained(staging)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    staging.rename(output_dir)
    return output_dir


def write_tiny_qwen2_text(output_dir: str | Path, hidden_size: int = 128, num_layers: int = 2, seed: int = 0) -> Path:
    """A tiny random text-only Qwen2 (head dim 64, the smallest vLLM's CPU attention runs) and its tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=(len(tokenizer) + 63) // 64 * 64, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=hidden_size // 64, num_key_value_heads=1,
        max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return _save_whole(output_dir, model, tokenizer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="perception-rl make-tiny-model", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="folder to write the model, tokenizer and processor into")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--vision-hidden-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_tiny_qwen2_5_vl(args.output_dir, args.hidden_size, args.num_layers, args.seed, args.vision_hidden_size)
    print(f"wrote a tiny random Qwen2.5-VL to {path}")


class TinyRandomPolicy(Policy):
    """The tiny random Qwen2.5-VL as a policy: written to `model_path` on first use, then loaded from there.

    For demos and tests only; its weights are random.

    Args:
        model_path: folder to write to and load from.
        hidden_size: language model width.
        num_layers: language model depth.
        seed: initialisation seed.
        dtype: parameter dtype.
        gradient_checkpointing: recompute activations in backward.
        freeze_vision_tower: keep the vision encoder fixed.
        min_pixels: lower image area bound for the image processor.
        max_pixels: upper image area bound for the image processor.
    """

    def __init__(
        self,
        model_path: str = ".cache/perception-rl/tiny-qwen2_5_vl",
        hidden_size: int = 64,
        num_layers: int = 2,
        seed: int = 0,
        dtype: Dtype = "float32",
        gradient_checkpointing: bool = False,
        freeze_vision_tower: bool = False,
        min_pixels: int = 3136,
        max_pixels: int = 12544,
    ):
        super().__init__(model_path, dtype, None, gradient_checkpointing, freeze_vision_tower, min_pixels, max_pixels)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.seed = seed

    def prepare(self) -> None:
        if not (Path(self.model_path) / "config.json").is_file():
            write_tiny_qwen2_5_vl(self.model_path, self.hidden_size, self.num_layers, self.seed)


class TinyTextPolicy(Policy):
    """A tiny random text-only Qwen2 as a policy (head dim 64: vLLM's CPU build runs it), written to
    `model_path` on first use. For the vLLM smoke test and demos only; its weights are random.

    Args:
        model_path: folder to write to and load from.
        hidden_size: model width (a multiple of 64).
        num_layers: model depth.
        seed: initialisation seed.
        dtype: parameter dtype.
    """

    def __init__(
        self,
        model_path: str = ".cache/perception-rl/tiny-qwen2-text",
        hidden_size: int = 128,
        num_layers: int = 2,
        seed: int = 0,
        dtype: Dtype = "float32",
    ):
        if hidden_size % 64:
            raise ValueError(f"policy.hidden_size must be a multiple of 64 (vLLM's head dim), got {hidden_size}")
        super().__init__(model_path, dtype)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.seed = seed

    def prepare(self) -> None:
        if not (Path(self.model_path) / "config.json").is_file():
            write_tiny_qwen2_text(self.model_path, self.hidden_size, self.num_layers, self.seed)
