"""The demo's policy: a tiny Qwen2.5-VL with a short supervised warm start from a flawed teacher.

GRPO needs a policy that sometimes earns a reward: a random tiny model never writes the
`<think>...</think><answer>\\boxed{}</answer>` layout, every reward is 0 and GRPO has nothing to follow.
The warm start teaches the layout, the wording, the arithmetic and how to count dots, from the solutions
of a teacher with one perception flaw: it takes each orange dot for a red one three times out of four
(`confusion`). The warm-started model inherits the flaw. On held-out pictures with orange dots (four in
five) it usually states too many red dots and answers wrong, while it still samples the right count
often enough for GRPO to find it: held-out accuracy starts low and the visual facts are the thing to fix.

For the `compare` task (which colour has more dots) the same flaw never costs the answer, so the teacher
has a second, non-visual one: a lean towards red. When its counts say blue has more, it still concludes
"red" with probability `red_bias` (0.7 in the comparison), so the warm-started model answers most such
items wrong, for a reason an accuracy reward can fix, while it reads the picture wrong in a way only a
perception reward sees (see `perception_rl.data.synthetic`).

    perception-rl warm-start .cache/perception-rl/warm-tiny-qwen2_5_vl     # about a minute on 2 cores

writes the model (a Hugging Face folder: weights, tokenizer, processor) and `warm_start.json` (settings
and the loss of every step). `WarmStartPolicy` does the same on first use, so `perception-rl fit --config
configs/demo.yaml` needs nothing prepared. The model: a 2-layer, 128-wide Qwen2.5-VL language model (tied
embeddings), a 2-block, 64-wide vision tower, and a byte-level BPE trained on the task's own sentences
(about 400 tokens) so that words are single tokens; 0.6 M parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path

import torch

from perception_rl import grpo
from perception_rl.families import family_of
from perception_rl.data.datamodule import Sample
from perception_rl.data.prompts import DEFAULT_FORMAT_INSTRUCTION, user_message
from perception_rl.data.records import Record
from perception_rl.data.synthetic import KINDS, MAX_COUNT, TASKS, Task, question, solution, split_items
from perception_rl.policy import Dtype, Policy, tokenizer_of
from perception_rl.rollout.base import encode_prompts
from perception_rl.rollout.types import Rollouts
from perception_rl.tiny import build_model, build_processor, build_tokenizer


def task_corpus(task: Task = "count") -> list[str]:
    """Every sentence of the task's prompts and solutions, to train the tokenizer on."""
    texts = ["You are a helpful assistant.", DEFAULT_FORMAT_INSTRUCTION]
    if task == "compare":
        for red in range(1, 6):  # up to 4 red dots, and the orange one the teacher may count as red
            for blue in range(1, 5):
                texts += [solution("compare", red, blue, colour) for colour in ("red", "blue")]
        return [*texts, question("compare", 1, 1)]
    for kind in KINDS:
        for red in range(1, MAX_COUNT + 3):  # the teacher may state up to two dots too many
            for blue in range(1, MAX_COUNT + 1):
                texts += [question(kind, min(red, MAX_COUNT), blue), solution(kind, red, blue)]
    return texts


def teacher_solution(record: dict, rng: random.Random, confusion: float, red_bias: float = 0.0) -> str:
    """The flawed teacher's solution: each orange dot counted as red with probability `confusion`; a
    comparison concludes "red" with probability `red_bias` when its stated counts give blue."""
    counts, kind = record["metadata"]["counts"], record["metadata"]["task"]
    red = counts["red"] + sum(rng.random() < confusion for _ in range(counts["orange"]))
    if kind != "compare":
        return solution(kind, red, counts["blue"])
    colour = "red" if red > counts["blue"] or rng.random() < red_bias else "blue"
    return solution(kind, red, counts["blue"], colour)


def warm_start_items(
    num_items: int, seed: int = 0, confusion: float = 0.75, task: Task = "count", red_bias: float = 0.0,
) -> tuple[list[Sample], list[str]]:
    """Prompts of the `warmup` stream (drawn independently of the data splits) and the teacher's solutions."""
    rng = random.Random(seed * 7919 + 1)
    samples, targets = [], []
    for row, image in split_items("warmup", num_items, seed, task):
        record = Record(id=row["id"], problem=row["problem"], answer=row["answer"], images=row["images"],
                        annotations=row["annotations"], metadata=row["metadata"])
        samples.append(Sample(record, [image], [user_message(record, DEFAULT_FORMAT_INSTRUCTION, 1)]))
        targets.append(teacher_solution(row, rng, confusion, red_bias))
    return samples, targets


def supervised_batch(processor, samples: list[Sample], targets: list[str]) -> Rollouts:
    """Prompts rendered as for GRPO, followed by the target completions and the end-of-turn token.

    Built as a `Rollouts` (group size 1), so the forward pass is exactly the one GRPO scores completions with.
    """
    tokenizer = tokenizer_of(processor)
    prompts, inputs = encode_prompts(processor, samples)
    ids = [tokenizer(t + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for t in targets]
    completion = torch.full((len(ids), max(map(len, ids))), tokenizer.pad_token_id, dtype=torch.long)  # [P, L]
    mask = torch.zeros_like(completion)  # [P, L]
    for row, seq in enumerate(ids):
        completion[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return Rollouts(
        samples=samples, prompts=prompts, prompt_inputs=inputs, completion_ids=completion, completion_mask=mask,
        completions=targets, group_ids=torch.arange(len(samples)), group_size=1,
        truncated=torch.zeros(len(samples), dtype=torch.bool),
    )


def supervised_loss(model: torch.nn.Module, batch: Rollouts) -> torch.Tensor:
    """Token-mean negative log-likelihood of the target completions."""
    inputs = family_of(model).sequence_inputs(batch, torch.arange(len(batch)))
    length = batch.completion_ids.shape[1]
    logits = model(**inputs, use_cache=False, logits_to_keep=length + 1).logits[:, :-1]  # [P, L, V]
    logp = grpo.token_logprobs(logits, batch.completion_ids)  # [P, L]
    return -grpo.masked_mean(logp, batch.completion_mask.float())


def warm_start(
    model: torch.nn.Module, processor, steps: int = 500, batch_size: int = 16, learning_rate: float = 1e-3,
    num_items: int = 2048, seed: int = 0, confusion: float = 0.75, log_every: int = 100, task: Task = "count",
    red_bias: float = 0.0,
) -> list[float]:
    """Supervised steps on the teacher's solutions (AdamW, constant rate); returns every step's loss."""
    # No more items than the steps use.
    samples, targets = warm_start_items(min(num_items, steps * batch_size), seed, confusion, task, red_bias)
    batches = [supervised_batch(processor, samples[i : i + batch_size], targets[i : i + batch_size])
               for i in range(0, len(samples), batch_size)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    order = random.Random(seed)
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(steps):
        if step and step % len(batches) == 0:
            order.shuffle(batches)  # a new pass over the warm-up items, in a new order
        loss = supervised_loss(model, batches[step % len(batches)])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = losses[-log_every:]
            print(f"warm start: step {step + 1}/{steps}, loss {sum(recent) / len(recent):.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return losses


def write_warm_started_model(
    output_dir: str | Path, steps: int = 500, batch_size: int = 16, learning_rate: float = 1e-3,
    confusion: float = 0.75, seed: int = 0, hidden_size: int = 128, num_layers: int = 2, vision_hidden_size: int = 64,
    task: Task = "count", red_bias: float = 0.0,
) -> Path:
    """Build the tiny model with a tokenizer for the task, warm-start it and save it to `output_dir`."""
    output_dir = Path(output_dir).resolve()
    check_settings(steps=steps, batch_size=batch_size, learning_rate=learning_rate, confusion=confusion, task=task,
                   red_bias=red_bias)
    if output_dir.exists() and any(output_dir.iterdir()) and not (output_dir / "warm_start.json").is_file():
        raise FileExistsError(f"{output_dir} is not empty and holds no earlier warm start: not replacing it "
                              "(give an empty or new folder)")
    # On a private copy of the global RNG: a run that warm-starts on first use then samples exactly as a
    # run that found the model already written.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_tokenizer(corpus=task_corpus(task))
        processor = build_processor(tokenizer, min_pixels=3136, max_pixels=12544)
        model = build_model(tokenizer, hidden_size, num_layers, seed, vision_hidden_size, tie_word_embeddings=True)
        losses = warm_start(model, processor, steps, batch_size, learning_rate, seed=seed, confusion=confusion,
                            task=task, red_bias=red_bias)
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    settings = {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "confusion": confusion,
                "seed": seed, "hidden_size": hidden_size, "num_layers": num_layers,
                "vision_hidden_size": vision_hidden_size, "task": task, "red_bias": red_bias}
    (staging / "warm_start.json").write_text(json.dumps({"settings": settings, "loss": losses}) + "\n")
    # Swap in whole, so an interrupted run never leaves a folder that looks complete.
    if output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(output_dir)
    return output_dir


def check_settings(
    steps: int, batch_size: int, learning_rate: float, confusion: float, task: str = "count", red_bias: float = 0.0,
) -> None:
    """Refuse settings that cannot give a warm start, naming the one at fault."""
    if task not in TASKS:
        raise ValueError(f"warm start: task must be one of {sorted(TASKS)}, got {task!r}")
    if not 0.0 <= red_bias <= 1.0:
        raise ValueError(f"warm start: red_bias must be in [0, 1], got {red_bias}")
    if red_bias and task != "compare":
        raise ValueError(f"warm start: red_bias applies to the compare task only, got {red_bias} with task={task!r}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"warm start: {name} must be >= 1, got {value}")
    if not learning_rate > 0:
        raise ValueError(f"warm start: learning_rate must be > 0, got {learning_rate}")
    if not 0.0 <= confusion <= 1.0:
        raise ValueError(f"warm start: confusion must be in [0, 1], got {confusion}")


# Warm starts cached before the compare task existed were the count task's, without a red bias.
SETTINGS_BEFORE_TASKS = {"task": "count", "red_bias": 0.0}


class WarmStartPolicy(Policy):
    """The tiny Qwen2.5-VL after its warm start: written to `model_path` on first use, then loaded from there.

    A folder that already holds a model is used as it is (e.g. a trained run's `hf_model/`); a cached warm start
    (one with `warm_start.json`) must have been made with the settings given, else a clear error.

    Args:
        model_path: folder to write to and load from.
        steps: supervised warm-start steps.
        batch_size: warm-start prompts per step.
        learning_rate: warm-start AdamW learning rate.
        confusion: the teacher's chance of taking an orange dot for a red one.
        seed: initialisation and warm-up seed.
        task: the synthetic task the warm start teaches (`count` or `compare`; the data module's `task`).
        red_bias: compare task: the teacher's chance of concluding "red" when its counts say blue.
        hidden_size: language model width.
        num_layers: language model depth.
        vision_hidden_size: vision encoder width.
        dtype: parameter dtype.
        freeze_vision_tower: keep the vision encoder fixed during GRPO.
        min_pixels: lower image area bound for the image processor.
        max_pixels: upper image area bound for the image processor.
    """

    def __init__(
        self,
        model_path: str = ".cache/perception-rl/warm-tiny-qwen2_5_vl",
        steps: int = 500,
        batch_size: int = 16,
        learning_rate: float = 1e-3,
        confusion: float = 0.75,
        seed: int = 0,
        hidden_size: int = 128,
        num_layers: int = 2,
        vision_hidden_size: int = 64,
        dtype: Dtype = "float32",
        freeze_vision_tower: bool = False,
        min_pixels: int = 3136,
        max_pixels: int = 12544,
        task: Task = "count",
        red_bias: float = 0.0,
    ):
        check_settings(steps, batch_size, learning_rate, confusion, task, red_bias)
        super().__init__(model_path, dtype, None, False, freeze_vision_tower, min_pixels, max_pixels)
        self.settings = {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate,
                         "confusion": confusion, "seed": seed, "hidden_size": hidden_size, "num_layers": num_layers,
                         "vision_hidden_size": vision_hidden_size, "task": task, "red_bias": red_bias}

    def prepare(self) -> None:
        folder = Path(self.model_path)
        if not (folder / "config.json").is_file():
            write_warm_started_model(folder, **self.settings)
            return
        log = folder / "warm_start.json"
        if log.is_file():  # a cached warm start: it must be the one these settings ask for
            made = {**SETTINGS_BEFORE_TASKS, **json.loads(log.read_text())["settings"]}
            differ = {k: (made.get(k), v) for k, v in self.settings.items() if made.get(k) != v}
            if differ:
                raise ValueError(
                    f"{folder} holds a warm start made with other settings (found, asked): {differ}; delete the "
                    "folder to rebuild it, or give another policy.model_path"
                )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="perception-rl warm-start", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="folder to write the warm-started model into")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--confusion", type=float, default=0.75,
                        help="the teacher's chance of counting an orange dot as red")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=sorted(TASKS), default="count", help="the synthetic task to teach")
    parser.add_argument("--red-bias", type=float, default=0.0,
                        help="compare task: the teacher's chance of concluding 'red' when its counts say blue")
    args = parser.parse_args(argv)
    try:
        check_settings(args.steps, args.batch_size, args.learning_rate, args.confusion, args.task, args.red_bias)
    except ValueError as error:
        parser.error(str(error))
    path = write_warm_started_model(
        args.output_dir, args.steps, args.batch_size, args.learning_rate, args.confusion, args.seed,
        task=args.task, red_bias=args.red_bias,
    )
    print(f"wrote the warm-started tiny Qwen2.5-VL to {path}")
