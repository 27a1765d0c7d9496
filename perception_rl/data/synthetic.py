"""Small perception-heavy tasks the project draws itself: count the red and blue dots, then use the counts.

Each picture is a 3 x 3 grid of 28-pixel cells (84 x 84 pixels; each cell is exactly one of Qwen2.5-VL's
merged vision tokens) holding red and blue dots, orange dots (a distractor a careless reader takes for red)
and 0-1 green dot. The text never gives the counts away, so the picture must be read. Two tasks:

- `count` (the demo's): 1-3 red, 1-3 blue, 0-2 orange dots; the question asks for the total of red and blue
  dots ("How many red and blue dots are there in total?") or their difference ("How many more blue dots than
  red dots are there?"). A right answer needs right counts.
- `compare`: "Are there more red dots or more blue dots?" (answer `red` or `blue`), with counts two or more
  apart (1 vs 3, 1 vs 4, 2 vs 4) and 0-1 orange dot. Taking the orange dot for red never changes which
  colour has more, so a right answer is reachable with wrong perception: the paper's failure mode, where an
  accuracy reward cannot tell a right reading of the picture from a wrong one.

Each record carries:

- `answer`: the total, the difference, or the colour with more dots;
- `annotations`: the gold visual facts a solver must read off the picture, in the words the solution
  states them ("There are 3 red dots.", "There is 1 blue dot."), so `RuleJudge` can check a response;
- `metadata`: the question kind, the count of every colour, and the cell and colour of every dot.

The gold solution states the two facts (red first), then the arithmetic on the stated counts or the
comparison they give:
`<think>\\nThere are 3 red dots. There is 1 blue dot. 3 - 1 = 2.\\n</think>\\n<answer>\\n\\boxed{2}\\n</answer>`.

Splits are separate random streams of one seed (train, val, test, and a `warmup` stream for the
supervised warm start, see `perception_rl.warm_start`): the same seed gives byte-identical files. The
validation and held-out splits skip every picture the training split holds (deduplicated, so held-out
scores are on pictures GRPO never trained on; the warm-up stream is not excluded); for a given training set,
the first n items of a split do not depend on how many are written.

    perception-rl make-demo-data .cache/perception-rl/dots [--task compare]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw

from perception_rl.data.datamodule import ImageAblation, RecordDataModule
from perception_rl.data.prompts import DEFAULT_FORMAT_INSTRUCTION

GRID = 3  # cells per side
CELL = 28  # pixels per cell: one merged Qwen2.5-VL vision token (14-pixel patches, 2 x 2 merge)
SIZE = GRID * CELL
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "orange": (245, 150, 40), "green": (40, 160, 60)}
MAX_COUNT = 3  # count task: red and blue dots, each 1..MAX_COUNT
ORANGE_WEIGHTS = (1, 2, 2)  # count task: 0, 1 or 2 orange dots; most pictures hold the distractor
# Compare task: (fewer, more) two or more apart, so one orange dot counted as red never flips the answer.
COMPARE_PAIRS = ((1, 3), (1, 4), (2, 4))
COMPARE_ORANGE_WEIGHTS = (1, 4)  # 0 or 1 orange dot: four pictures in five hold the distractor
KINDS = ("total", "difference")  # the count task's questions
TASKS = {"count": KINDS, "compare": ("compare",)}  # each task's question kinds
SPLITS = {"train": 0, "val": 1, "test": 2, "warmup": 3}  # stream offsets of one seed

Kind = Literal["total", "difference", "compare"]
Task = Literal["count", "compare"]


# ---------------------------------------------------------------------------------------------- text
def fact(colour: str, count: int) -> str:
    """One visual fact as a solution states it: "There are 3 red dots." / "There is 1 blue dot."."""
    return f"There is 1 {colour} dot." if count == 1 else f"There are {count} {colour} dots."


def question(kind: Kind, red: int, blue: int) -> str:
    """The question for a picture with these counts; a difference question names the larger count first."""
    if kind == "total":
        return "How many red and blue dots are there in total?"
    if kind == "compare":
        return "Are there more red dots or more blue dots?"
    more, fewer = ("red", "blue") if red >= blue else ("blue", "red")
    return f"How many more {more} dots than {fewer} dots are there?"


def answer_of(kind: Kind, red: int, blue: int) -> int | str:
    if kind == "compare":
        return "red" if red > blue else "blue"
    return red + blue if kind == "total" else abs(red - blue)


def solution(kind: Kind, red: int, blue: int, conclusion: str | None = None) -> str:
    """The response that states these counts and answers from them, in the strict think/answer format.

    A difference takes the smaller stated count from the larger, so the answer follows from the stated
    counts alone (right counts give the right answer; wrong ones, usually a wrong answer). A comparison
    names the colour with more stated dots, or `conclusion` when given (a biased solver's, see warm_start).
    """
    if kind == "compare":
        result = conclusion or answer_of(kind, red, blue)
        think = f"{fact('red', red)} {fact('blue', blue)} So there are more {result} dots."
    else:
        arithmetic = f"{red} + {blue}" if kind == "total" else f"{max(red, blue)} - {min(red, blue)}"
        result = answer_of(kind, red, blue)
        think = f"{fact('red', red)} {fact('blue', blue)} {arithmetic} = {result}."
    return f"<think>\n{think}\n</think>\n<answer>\n\\boxed{{{result}}}\n</answer>"


# ---------------------------------------------------------------------------------------------- pictures
def draw_picture(dots: list[dict]) -> Image.Image:
    """The picture of `dots` ({"cell": [row, col], "colour": name} each) on white."""
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    pad = 3
    for dot in dots:
        row, col = dot["cell"]
        box = (col * CELL + pad, row * CELL + pad, (col + 1) * CELL - pad - 1, (row + 1) * CELL - pad - 1)
        draw.ellipse(box, fill=COLOURS[dot["colour"]])
    return image


def cell_colours(image: Image.Image) -> dict[tuple[int, int], str]:
    """Read a picture back: the colour of each occupied cell (its centre pixel); for checks and tests."""
    by_rgb = {rgb: name for name, rgb in COLOURS.items()}
    found = {}
    for row in range(GRID):
        for col in range(GRID):
            pixel = image.getpixel((col * CELL + CELL // 2, row * CELL + CELL // 2))
            if pixel in by_rgb:
                found[(row, col)] = by_rgb[pixel]
    return found


# ---------------------------------------------------------------------------------------------- items
def _draw_counts(rng: random.Random, task: Task) -> tuple[Kind, int, int, int]:
    """A question kind and the red, blue and orange counts of one item."""
    if task == "compare":
        fewer, more = rng.choice(COMPARE_PAIRS)
        red, blue = (more, fewer) if rng.random() < 0.5 else (fewer, more)
        return "compare", red, blue, rng.choices((0, 1), weights=COMPARE_ORANGE_WEIGHTS)[0]
    kind: Kind = rng.choice(KINDS)
    red, blue = rng.randint(1, MAX_COUNT), rng.randint(1, MAX_COUNT)
    return kind, red, blue, rng.choices(range(len(ORANGE_WEIGHTS)), weights=ORANGE_WEIGHTS)[0]


def make_item(rng: random.Random, index: int, split: str, task: Task = "count") -> tuple[dict, Image.Image]:
    """One record (its image path relative to the data folder) and its picture."""
    kind, red, blue, orange = _draw_counts(rng, task)
    colours = ["red"] * red + ["blue"] * blue + ["orange"] * orange + ["green"] * rng.randint(0, 1)
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], len(colours))
    dots = [{"cell": list(cell), "colour": colour} for cell, colour in sorted(zip(cells, colours))]
    name = f"{split}_{index:05d}.png"
    record = {
        "id": f"dots-{split}-{index}" if task == "count" else f"dots-{task}-{split}-{index}",
        "problem": question(kind, red, blue),
        "answer": str(answer_of(kind, red, blue)),
        "images": [f"images/{name}"],
        "annotations": [fact("red", red), fact("blue", blue)],
        "metadata": {"task": kind, "counts": {c: colours.count(c) for c in COLOURS}, "dots": dots},
    }
    return record, draw_picture(dots)


def in_words(record: dict) -> dict:
    """The record with its picture described in the problem text and no image: the text-only variant, for
    text models (e.g. vLLM's CPU build, which serves no vision model). Dots are listed cell by cell."""
    dots = ", ".join(
        f"a {d['colour']} dot at row {d['cell'][0] + 1}, column {d['cell'][1] + 1}" for d in record["metadata"]["dots"]
    )
    return {**record, "problem": f"The picture shows {dots}. {record['problem']}", "images": []}


def picture_key(record: dict) -> str:
    """What identifies a picture: its dots, cell by cell (two records with one key show the same picture)."""
    return json.dumps(record["metadata"]["dots"])


def split_items(
    split: str, count: int, seed: int = 0, task: Task = "count", exclude: frozenset[str] = frozenset(),
) -> list[tuple[dict, Image.Image]]:
    """The first `count` items of a split's stream (records and pictures, in memory), skipping every picture
    whose `picture_key` is in `exclude` (and repeats within the split are kept: they are the task's odds)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    rng = random.Random(seed * 1000 + SPLITS[split])
    items: list[tuple[dict, Image.Image]] = []
    for _ in range(100 * count + 1000):  # the picture space is large: this bound only stops a runaway exclude
        if len(items) == count:
            return items
        record, image = make_item(rng, len(items), split, task)
        if picture_key(record) not in exclude:
            items.append((record, image))
    raise ValueError(f"dots task: could not draw {count} {split} pictures outside the {len(exclude)} excluded ones")


def write_dots_dataset(
    output_dir: str | Path, num_train: int = 1024, num_val: int = 32, num_test: int = 200, seed: int = 0,
    text_only: bool = False, task: Task = "count",
) -> Path:
    """Write train/val/test JSONL files and their PNG images under `output_dir` (no images with `text_only`:
    each picture is described in its problem's text, see `in_words`). Validation and test pictures are
    drawn outside the training pictures."""
    for name, count in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if count < 0:
            raise ValueError(f"dots task: {name} must be >= 0, got {count}")
    output_dir = Path(output_dir)
    (output_dir / "images").mkdir(parents=True, exist_ok=True)
    seen: frozenset[str] = frozenset()
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        items = split_items(split, count, seed, task, exclude=seen)
        if split == "train":
            seen = frozenset(picture_key(record) for record, _ in items)
        if text_only:
            records = [in_words(record) for record, _ in items]
        else:
            records = [record for record, _ in items]
            for record, image in items:
                image.save(output_dir / record["images"][0])
        temp = output_dir / f"{split}.jsonl.tmp"
        temp.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
        temp.replace(output_dir / f"{split}.jsonl")  # atomic: a half-written file is never read
    return output_dir


class DotsDataModule(RecordDataModule):
    """`RecordDataModule` over the synthetic dots task, generated into `data_dir` on first use.

    Args:
        data_dir: where the task's files live (rewritten when absent or made with other sizes or seed).
        num_train: training items.
        num_val: validation items.
        num_test: held-out test items.
        seed: generator seed; the same seed gives byte-identical files.
        batch_size: prompts per training step per device.
        eval_batch_size: prompts per validation/test step per device.
        num_workers: dataloader worker processes.
        format_instruction: appended to every problem after a space.
        min_pixels: lower image area bound.
        max_pixels: upper image area bound (the pictures are 84 x 84 = 7056 pixels).
        text_only: describe each picture in its problem's text instead of attaching it (for text models).
        task: `count` (total or difference of the counts; the demo's) or `compare` (which colour has more
            dots; a right answer is reachable with a wrong count), see the module docstring.
        image_ablation: a control: `blank` replaces every image by a white canvas of its size, `shuffled` by
            another item's image (see `RecordDataModule`).
    """

    def __init__(
        self,
        data_dir: str = ".cache/perception-rl/dots",
        num_train: int = 1024,
        num_val: int = 32,
        num_test: int = 200,
        seed: int = 0,
        batch_size: int = 2,
        eval_batch_size: int = 8,
        num_workers: int = 0,
        format_instruction: str = DEFAULT_FORMAT_INSTRUCTION,
        min_pixels: int = 3136,
        max_pixels: int = 12544,
        text_only: bool = False,
        task: Task = "count",
        image_ablation: ImageAblation = "none",
    ):
        if task not in TASKS:
            raise ValueError(f"data.task must be one of {sorted(TASKS)}, got {task!r}")
        if min(num_train, num_val, num_test) < 0:
            raise ValueError(
                f"data: num_train, num_val and num_test must be >= 0, got {num_train}, {num_val}, {num_test}"
            )
        folder = Path(data_dir)
        super().__init__(
            train_files=str(folder / "train.jsonl"), val_files=str(folder / "val.jsonl"),
            test_files=str(folder / "test.jsonl"), batch_size=batch_size, eval_batch_size=eval_batch_size,
            num_workers=num_workers, format_instruction=format_instruction, min_pixels=min_pixels,
            max_pixels=max_pixels, image_ablation=image_ablation,
        )
        self.data_dir = folder
        self.task = task
        self.sizes = (num_train, num_val, num_test)
        self.seed = seed
        self.text_only = text_only

    def prepare_data(self) -> None:
        stamp = self.data_dir / "generated.json"
        # v2: held-out pictures deduplicated against the training ones.
        wanted = {"task": "dots-v2" if self.task == "count" else f"dots-{self.task}-v2", "sizes": list(self.sizes),
                  "seed": self.seed}
        if self.text_only:
            wanted["text_only"] = True
        if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
            return
        write_dots_dataset(self.data_dir, *self.sizes, seed=self.seed, text_only=self.text_only, task=self.task)
        stamp.write_text(json.dumps(wanted))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="perception-rl make-demo-data", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir")
    parser.add_argument("--num-train", type=int, default=1024)
    parser.add_argument("--num-val", type=int, default=32)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=sorted(TASKS), default="count")
    args = parser.parse_args(argv)
    path = write_dots_dataset(args.output_dir, args.num_train, args.num_val, args.num_test, args.seed, task=args.task)
    print(f"wrote the dots {args.task} task to {path} (train/val/test .jsonl + images/)")
