"""The work every side of the benchmark does: shapes, model, processor, prompts and reward.

Each side (perception-rl, TRL, the floor) builds its model with `build_parts`, so all three start from
bit-identical weights (same builder, same seed) and use one processor and one tokenizer configuration.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "dev"
PATCH = 28  # Qwen2.5-VL: a 14-pixel patch, 2 x 2 patches merged into one visual token


@dataclass(frozen=True)
class Case:
    """One benchmark shape: the tiny model's size and the side of the square images."""

    name: str
    hidden_size: int
    num_layers: int
    vision_hidden_size: int
    image_side: int

    @property
    def visual_tokens(self) -> int:
        """Visual tokens per image after the 2 x 2 merge (64 at 224 px, 256 at 448 px)."""
        return (self.image_side // PATCH) ** 2


CASES = {
    case.name: case
    for case in (
        Case("0.22M", hidden_size=64, num_layers=2, vision_hidden_size=32, image_side=224),
        Case("10M", hidden_size=384, num_layers=6, vision_hidden_size=192, image_side=224),
        Case("10M-long", hidden_size=384, num_layers=6, vision_hidden_size=192, image_side=448),
    )
}


@dataclass(frozen=True)
class Settings:
    """What one GRPO step does; identical on every side."""

    steps: int = 8  # optimizer steps per run (one rollout batch each)
    prompts_per_step: int = 2
    group_size: int = 8  # G completions per prompt
    new_tokens: int = 64  # every completion is exactly this long (min_new_tokens = max_new_tokens)
    learning_rate: float = 1e-6
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    clip_epsilon: float = 0.2
    temperature: float = 1.0
    seed: int = 0
    threads: int = 2

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def prompts_needed(self) -> int:
        return self.steps * self.prompts_per_step

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prompt:
    """One dev item: its record (for perception-rl), chat messages (shared) and the resized image."""

    record: object  # perception_rl.data.records.Record
    messages: list[dict]
    image: Image.Image


def build_parts(case: Case, seed: int = 0):
    """(tokenizer, processor, model) from `perception_rl.tiny`, the model in training mode.

    The processor's pixel bound is the case's image area, so a side x side image keeps its size and gives
    `case.visual_tokens` visual tokens.
    """
    from perception_rl.tiny import build_model, build_processor, build_tokenizer

    tokenizer = build_tokenizer()
    area = case.image_side * case.image_side
    processor = build_processor(tokenizer, min_pixels=PATCH * PATCH * 4, max_pixels=area)
    model = build_model(
        tokenizer, hidden_size=case.hidden_size, num_layers=case.num_layers, seed=seed,
        vision_hidden_size=case.vision_hidden_size,
    )
    return tokenizer, processor, model.train()


def load_prompts(data_dir: Path, count: int, image_side: int) -> list[Prompt]:
    """The first `count` dev items as prompts, each image converted to RGB and resized to side x side.

    The messages are perception-rl's own user turn (problem, lettered options, format instruction), so TRL
    and the floor render exactly the prompt perception-rl renders.
    """
    from perception_rl.data.images import to_rgb
    from perception_rl.data.prompts import DEFAULT_FORMAT_INSTRUCTION, user_message
    from perception_rl.data.records import Record

    rows = [json.loads(line) for line in (data_dir / "dev.jsonl").read_text().splitlines() if line.strip()]
    if len(rows) < count:
        raise SystemExit(f"{data_dir}/dev.jsonl has {len(rows)} items; the benchmark needs {count}")
    prompts = []
    for row in rows[:count]:
        path = data_dir / row["image"]
        record = Record(id=row["id"], problem=row["question"], answer=str(row["answer"]), images=[str(path)],
                        choices=row.get("choices"), metadata={"answer_type": row.get("answer_type")})
        with Image.open(path) as raw:
            image = to_rgb(raw).resize((image_side, image_side), Image.Resampling.BICUBIC)
        prompts.append(Prompt(record, [user_message(record, DEFAULT_FORMAT_INSTRUCTION, 1)], image))
    return prompts


def digit_share(texts: list[str]) -> list[float]:
    """The reward: share of characters that are digits. Deterministic, cheap, and it varies across
    random completions, so advantages (and therefore updates) are non-zero."""
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in texts]
