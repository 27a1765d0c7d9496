"""`RolloutLog`: a Lightning callback that writes what the policy sampled and how it was scored, every N steps.

    trainer:
      callbacks:
        - class_path: perception_rl.RolloutLog
          init_args: {every_n_steps: 10, max_groups: 4}

Each logged step is one parquet file, `<default_root_dir>/rollouts/step_<NNNNNN>.parquet` (N: the trainer's
global step, as in the progress bar and the checkpoints), one row per completion:

    step, record_id, group, sample     the step; the prompt (its index in the step's batch) and which of its G samples
    problem, answer, annotations       the record's problem, gold answer and visual annotations
    prompt, images                     the rendered prompt; its images, paths relative to rollouts/ (images/<hash>.png)
    completion, completion_tokens, truncated
    reward/<name>                      each reward's score, by reward name (NaN: it abstained)
    total, advantage                   the weighted total reward and the group-normalised advantage
    judge/<name>/items                 for a reward that asks a judge (PerceptionReward): each annotation item's
                                       verdict (correct, wrong, unparsable, missing, failed); then
    judge/<name>/values, failure, error, reply, judged_response, cached
                                       the answered items' values, the request's failure kind and message, the
                                       judge's raw reply, the response as the judge read it when the neutraliser
                                       changed it (null: unchanged), whether the verdict came from the cache

The schema's metadata (key `perception_rl`) holds the step, G and each reward's weight and kind (accuracy,
perception, other). `perception-rl view RUN_DIR` renders the files as one HTML page.
"""

from __future__ import annotations

import collections
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from perception_rl.annotate.worklog import atomic_write
from perception_rl.background import BackgroundWriter
from perception_rl.data.images import fit_within
from perception_rl.judge.types import JudgeVerdict
from perception_rl.rewards.accuracy import AccuracyReward

ROLLOUTS_DIR = "rollouts"
IMAGES_DIR = "images"
METADATA_KEY = b"perception_rl"
WANDB_KEY = "rollouts"


class RolloutLog(L.Callback):
    """Write every `every_n_steps`-th training step's rollouts, rewards, advantages and judge verdicts to parquet.

    Bounded: a logged step keeps at most `max_groups` prompts (the first of the batch) x G completions, and
    each distinct image once, its longest side at most `max_image_side` pixels (named by a hash of those
    pixels: a prompt seen again adds no file). Kept across resume: nothing is deleted; a step written again
    (a resumed run repeats the steps after its checkpoint) is replaced atomically (temporary file, rename).
    Off the hot path: the training thread only copies the chosen groups' values (lists, and references to
    images and verdicts, which nothing changes afterwards); downscaling, PNG and parquet writing run on one
    background thread, `max_pending` steps queued at most (training waits rather than drop a step). It is
    flushed when training ends or fails (Ctrl-C included), so no step is lost. Under several processes,
    process 0 writes its own share of the batch (the other processes' rollouts are not gathered). With a
    `WandbLogger` among the trainer's loggers, each written step is also logged as a `wandb.Table` under
    key `rollouts` (one row per completion, images as `wandb.Image`), from the written PNGs.

    Args:
        every_n_steps: log the steps at which the trainer's global step reaches a multiple of this.
        max_groups: prompts (each with its G completions) written per logged step.
        max_image_side: longest side, in pixels, of the stored images (larger ones are scaled down).
        max_pending: logged steps that may wait for the writer before training waits for it.
    """

    def __init__(self, every_n_steps: int = 10, max_groups: int = 4, max_image_side: int = 256, max_pending: int = 2):
        for name, value, low in (("every_n_steps", every_n_steps, 1), ("max_groups", max_groups, 1),
                                 ("max_image_side", max_image_side, 16), ("max_pending", max_pending, 1)):
            if value < low:
                raise ValueError(f"RolloutLog.{name} must be >= {low}, got {value}")
        self.every_n_steps = every_n_steps
        self.max_groups = max_groups
        self.max_image_side = max_image_side
        self.writer = BackgroundWriter("RolloutLog-writer", max_pending)
        self._step_at_start = 0
        self._written: collections.deque = collections.deque()  # (step, folder, rows) written, for W&B

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._log_written_to_wandb(trainer)
        step, scored = trainer.global_step, getattr(pl_module, "scored", None)
        if not trainer.is_global_zero or scored is None or not self._crosses_a_multiple(step):
            return
        snapshot = take_snapshot(scored, step, self.max_groups, getattr(pl_module, "rewards", []))
        folder = Path(trainer.default_root_dir) / ROLLOUTS_DIR
        wandb = bool(_wandb_loggers(trainer))
        self.writer.submit(lambda: self._write(snapshot, folder, wandb))

    def _crosses_a_multiple(self, step: int) -> bool:
        """Whether this training step moved the global step onto or past a multiple of every_n_steps (a step
        may take several optimizer steps: mini-batches, update epochs)."""
        return step // self.every_n_steps > self._step_at_start // self.every_n_steps

    def _write(self, snapshot: StepSnapshot, folder: Path, wandb: bool) -> None:
        rows = write_step(snapshot, folder, self.max_image_side)
        if wandb:
            self._written.append((snapshot.step, folder, rows))

    def flush(self, trainer: L.Trainer | None = None) -> None:
        """Wait for every queued step to be written (then log them to W&B)."""
        self.writer.flush()
        if trainer is not None:
            self._log_written_to_wandb(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.writer.flush()  # the files first: they must not be lost
        try:
            self._log_written_to_wandb(trainer)
        except Exception as err:  # noqa: BLE001 - never hide the exception that ended training
            warnings.warn(f"RolloutLog: the last steps' W&B tables were not logged ({err!r})", stacklevel=1)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.writer.close()

    def _log_written_to_wandb(self, trainer: L.Trainer) -> None:
        """On the training thread (wandb's run is not shared with the writer thread)."""
        loggers = _wandb_loggers(trainer)
        while self._written:
            step, folder, rows = self._written.popleft()
            for logger in loggers:
                columns, data = wandb_table(rows, folder)
                logger.log_table(WANDB_KEY, columns=columns, data=data, step=step)


# ---------------------------------------------------------------------------------------------- training thread
@dataclass
class StepSnapshot:
    """What one logged step writes, copied on the training thread: plain values and references to images and
    verdicts (immutable), nothing that training changes later."""

    step: int
    group_size: int
    rewards: list[dict[str, Any]]  # name, weight, kind
    groups: list[dict[str, Any]]  # per prompt: record_id, problem, answer, annotations, prompt, images (PIL)
    rows: list[dict[str, Any]]  # per completion: group, sample, completion, tokens, truncated, scores, ...
    verdicts: dict[str, list[JudgeVerdict]]  # per judging reward: one verdict per row
    judges: dict[str, Any]  # per judging reward: its judge (reads per-item verdicts from replies), or None


def take_snapshot(scored, step: int, max_groups: int, rewards: list) -> StepSnapshot:
    """The first `max_groups` groups of a `ScoredRollouts` (GRPOModule.scored), as a `StepSnapshot`."""
    rollouts, breakdown = scored.rollouts, scored.rewards
    group_ids = rollouts.group_ids.tolist()
    keep = [i for i, g in enumerate(group_ids) if g < max_groups]
    tokens = rollouts.completion_mask[keep].sum(-1).tolist()
    truncated = rollouts.truncated[keep].tolist()
    totals = breakdown.total[keep].tolist()
    advantages = scored.advantages[keep].tolist()
    scores = {name: output.scores[keep].tolist() for name, output in breakdown.outputs.items()}
    rows, seen = [], collections.Counter()
    for k, i in enumerate(keep):
        group = group_ids[i]
        rows.append({
            "group": group, "sample": seen[group], "completion": rollouts.completions[i],
            "completion_tokens": int(tokens[k]), "truncated": bool(truncated[k]), "total": totals[k],
            "advantage": advantages[k], **{f"reward/{name}": values[k] for name, values in scores.items()},
        })
        seen[group] += 1
    groups = []
    for sample, prompt in list(zip(rollouts.samples, rollouts.prompts))[:max_groups]:
        record = sample.record
        groups.append({"record_id": str(record.id), "problem": record.problem, "answer": str(record.answer),
                       "annotations": list(record.annotations or []), "prompt": prompt, "images": list(sample.images)})
    by_name = {getattr(r, "name", None): r for r in rewards}
    verdicts = {name: [output.verdicts[i] for i in keep] for name, output in breakdown.outputs.items()
                if output.verdicts is not None}
    return StepSnapshot(
        step=step, group_size=rollouts.group_size,
        rewards=[{"name": name, "weight": float(getattr(by_name.get(name), "weight", 1.0)),
                  "kind": _kind(by_name.get(name), name in verdicts)} for name in breakdown.outputs],
        groups=groups, rows=rows, verdicts=verdicts,
        judges={name: getattr(by_name.get(name), "judge", None) for name in verdicts},
    )


def _kind(reward, judges: bool) -> str:
    """What the viewer's filters need to know of a reward: is it the answer's accuracy, or judged perception."""
    if isinstance(reward, AccuracyReward):
        return "accuracy"
    return "perception" if judges else "other"


# ---------------------------------------------------------------------------------------------- writer thread
def write_step(snapshot: StepSnapshot, folder: Path, max_image_side: int) -> list[dict[str, Any]]:
    """Store the step's images (once each) and write its parquet file atomically; returns the rows written."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts = [{**group, "images": [store_image(image, folder, max_image_side) for image in group["images"]]}
               for group in snapshot.groups]
    rows = []
    for k, row in enumerate(snapshot.rows):
        out = {"step": snapshot.step, **prompts[row["group"]], **row}
        for name, verdicts in snapshot.verdicts.items():
            out.update(_judge_columns(name, verdicts[k], snapshot.judges.get(name)))
        rows.append(out)
    table = pa.Table.from_pylist(rows, schema=_schema(snapshot))
    atomic_write(folder / f"step_{snapshot.step:06d}.parquet", lambda temp: pq.write_table(table, temp), durable=False)
    return rows


def store_image(image: Image.Image, folder: Path, max_side: int) -> str:
    """The image scaled to fit `max_side`, as images/<hash>.png under `folder` (written once); its relative path."""
    small = fit_within(image, max_side)
    digest = hashlib.sha256(f"{small.mode}{small.size}".encode() + small.tobytes()).hexdigest()[:20]
    relative = f"{IMAGES_DIR}/{digest}.png"
    path = folder / relative
    if not path.is_file():
        atomic_write(path, lambda temp: small.save(temp, format="PNG"), durable=False)
    return relative


def _judge_columns(name: str, verdict: JudgeVerdict, judge) -> dict[str, Any]:
    if judge is not None and hasattr(judge, "item_verdicts"):
        items = list(judge.item_verdicts(verdict))
    else:  # a judge of another kind: answered items by value, the rest unknown
        items = ["failed" if verdict.failure else "correct" if v >= 0.5 else "wrong" for v in verdict.values]
        items += ["missing"] * verdict.missing
    values = [float(verdict.values[k]) if item in ("correct", "wrong") else None for k, item in enumerate(items)]
    prefix = f"judge/{name}"
    return {f"{prefix}/items": items, f"{prefix}/values": values, f"{prefix}/failure": verdict.failure,
            f"{prefix}/error": verdict.error or None, f"{prefix}/reply": verdict.reply,
            f"{prefix}/judged_response": verdict.judged_response, f"{prefix}/cached": bool(verdict.cached)}


def _schema(snapshot: StepSnapshot) -> pa.Schema:
    text, strings = pa.string(), pa.list_(pa.string())
    fields = [
        ("step", pa.int64()), ("record_id", text), ("group", pa.int32()), ("sample", pa.int32()),
        ("problem", text), ("answer", text), ("annotations", strings), ("prompt", text), ("images", strings),
        ("completion", text), ("completion_tokens", pa.int32()), ("truncated", pa.bool_()),
        *((f"reward/{r['name']}", pa.float64()) for r in snapshot.rewards),
        ("total", pa.float64()), ("advantage", pa.float64()),
    ]
    for name in snapshot.verdicts:
        fields += [(f"judge/{name}/items", strings), (f"judge/{name}/values", pa.list_(pa.float64())),
                   *((f"judge/{name}/{key}", text) for key in ("failure", "error", "reply", "judged_response")),
                   (f"judge/{name}/cached", pa.bool_())]
    metadata = {"step": snapshot.step, "group_size": snapshot.group_size, "rewards": snapshot.rewards,
                "judged_by": sorted(snapshot.verdicts)}
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(metadata).encode()})


# ---------------------------------------------------------------------------------------------- reading, W&B
def read_step(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One written step: its rows (dicts, as written) and the schema's metadata (step, group_size, rewards)."""
    table = pq.read_table(path)
    metadata = json.loads((table.schema.metadata or {}).get(METADATA_KEY, b"{}"))
    return table.to_pylist(), metadata


def wandb_table(rows: list[dict[str, Any]], folder: Path) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of one step's W&B table: the first image as `wandb.Image`, lists as text, the rest as is."""
    import wandb

    columns = ["image", *[key for key in rows[0] if key not in ("images", "prompt")]] if rows else []
    images: dict[str, Any] = {}
    data = []
    for row in rows:
        first = row["images"][0] if row["images"] else None
        if first is not None and first not in images:
            images[first] = wandb.Image(str(folder / first))
        values = [", ".join(map(str, row[key])) if isinstance(row[key], list) else row[key] for key in columns[1:]]
        data.append([images.get(first), *values])
    return columns, data


def _wandb_loggers(trainer: L.Trainer) -> list:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - part of lightning
        return []
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
