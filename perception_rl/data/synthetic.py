"""A small synthetic multimodal task the project draws itself: count the shapes of one kind in a picture.

Deterministic from a seed. Each record carries gold visual annotations (how many of each shape the
picture holds), so the perception reward has something to check. Used by the CPU demo and the tests.

    perception-rl make-demo-data .cache/perception-rl/shapes
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from perception_rl.data.datamodule import RecordDataModule
from perception_rl.data.prompts import DEFAULT_FORMAT_INSTRUCTION

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 160, 60)}


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=colour)


def make_item(rng: random.Random, index: int, image_dir: Path, split: str, size: int = 112) -> dict:
    """Draw 1-5 shapes on a grid and ask how many of one kind there are."""
    cells = [(r, c) for r in range(3) for c in range(3)]
    placed = rng.sample(cells, rng.randint(1, 5))
    cell = size // 3
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    counts = dict.fromkeys(SHAPES, 0)
    for r, c in placed:
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        counts[shape] += 1
        pad = 5
        _draw(draw, shape, (c * cell + pad, r * cell + pad, (c + 1) * cell - pad, (r + 1) * cell - pad), COLOURS[colour])
    asked = rng.choice([s for s in SHAPES if counts[s]] or list(SHAPES))
    name = f"{split}_{index:05d}.png"
    image.save(image_dir / name)
    return {
        "id": f"shapes-{split}-{index}",
        "problem": f"How many {asked}s are in the image?",
        "answer": str(counts[asked]),
        "images": [f"images/{name}"],
        "annotations": [f"There {'is' if n == 1 else 'are'} {n} {s}{'' if n == 1 else 's'}." for s, n in counts.items() if n],
        "metadata": {"task": "count", "shape": asked, "total_shapes": len(placed)},
    }


def write_shapes_dataset(output_dir: str | Path, num_train: int = 64, num_val: int = 16, num_test: int = 32, seed: int = 0) -> Path:
    """Write train/val/test JSONL files and their PNG images under `output_dir`."""
    output_dir = Path(output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    for split, count, offset in (("train", num_train, 0), ("val", num_val, 1), ("test", num_test, 2)):
        rng = random.Random(seed * 1000 + offset)
        items = [make_item(rng, i, output_dir / "images", split) for i in range(count)]
        temp = output_dir / f"{split}.jsonl.tmp"
        temp.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
        temp.replace(output_dir / f"{split}.jsonl")  # atomic: a half-written file is never read
    return output_dir


class ShapesDataModule(RecordDataModule):
    """`RecordDataModule` over the synthetic shapes task, generated into `data_dir` on first use.

    Args:
        data_dir: where the task's files live (written if absent).
        num_train: training items.
        num_val: validation items.
        num_test: test items.
        seed: generator seed; the same seed gives byte-identical files.
        batch_size: prompts per training step per device.
        eval_batch_size: prompts per validation/test step per device.
        num_workers: dataloader worker processes.
        format_instruction: appended to every problem after a space.
        min_pixels: lower image area bound.
        max_pixels: upper image area bound.
    """

    def __init__(
        self,
        data_dir: str = ".cache/perception-rl/shapes",
        num_train: int = 64,
        num_val: int = 16,
        num_test: int = 32,
        seed: int = 0,
        batch_size: int = 2,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        format_instruction: str = DEFAULT_FORMAT_INSTRUCTION,
        min_pixels: int = 3136,
        max_pixels: int = 1806336,
    ):
        folder = Path(data_dir)
        super().__init__(
            train_files=str(folder / "train.jsonl"), val_files=str(folder / "val.jsonl"),
            test_files=str(folder / "test.jsonl"), batch_size=batch_size, eval_batch_size=eval_batch_size,
            num_workers=num_workers, format_instruction=format_instruction, min_pixels=min_pixels, max_pixels=max_pixels,
        )
        self.data_dir = folder
        self.sizes = (num_train, num_val, num_test)
        self.seed = seed

    def prepare_data(self) -> None:
        stamp = self.data_dir / "generated.json"
        wanted = {"sizes": list(self.sizes), "seed": self.seed}
        if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
            return
        write_shapes_dataset(self.data_dir, *self.sizes, seed=self.seed)
        stamp.write_text(json.dumps(wanted))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="perception-rl make-demo-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir")
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--num-val", type=int, default=16)
    parser.add_argument("--num-test", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_shapes_dataset(args.output_dir, args.num_train, args.num_val, args.num_test, args.seed)
    print(f"wrote the shapes task to {path} (train/val/test .jsonl)")
