"""`BenchmarkEvaluation`: what `perception-rl test` does around generation (GRPOModule holds one).

    setup   (every process, before dataloaders exist) find the output folder, read the rows already
            written there and take those items out of the test set: a resumed run never redoes them
    start   check that the rows there come from this model and decoding; process 0 counts them into
            the metrics, so the final numbers cover the whole benchmark
    admit   per test batch: which samples count (not done before, not a sampler repeat) and get generated
    record  per test batch: grade each response (rules, then the optional LLM stage for what the rules
            cannot settle), append one row per item to this process's file, update the metrics
    finish  reduce the metrics over processes; process 0 merges the rows, writes summary.json and
            summary.md and prints the table

Under several processes Lightning's sampler pads the item list so every process gets as many batches;
the repeated items are neither written nor counted (nor generated, unless generation is sharded and every
process must take part in every step). Each process writes its own rows, so resuming and the summary are
right whether the new run has as many processes as the interrupted one or not.
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DistributedSampler

from perception_rl.eval import results
from perception_rl.eval.benchmarks import reason_kind
from perception_rl.eval.judging import AnswerJudge
from perception_rl.eval.metrics import (
    AnswerAccuracy,
    FormatCompliance,
    GroupedAccuracy,
    MeanResponseLength,
    PerceptionScore,
    group_labels,
)
from perception_rl.judge.types import FAILURE_KINDS, ITEM_OUTCOMES
from perception_rl.rewards.answers import grade
from perception_rl.rewards.format import follows_format

_COUNTERS = ("llm_judged", "judge_requests", "judge_changed", "judge_failures", "perception_correct",
             "right_and_scored", "right_answer_wrong_perception")
# The perception reward's judge health (its `judge/...` counters), summed over batches and processes: an
# abstaining judge leaves items out of the perception score, and the report says how many and why.
_PERCEPTION_JUDGE = (
    "requests", "failures", *(f"failures/{k}" for k in FAILURE_KINDS), *(f"items/{o}" for o in ITEM_OUTCOMES),
)


class BenchmarkEvaluation(torch.nn.Module):
    """How `perception-rl test` decodes, scores and reports: per-item rows (resumable), metrics, summary table.

    Args:
        output_dir: folder for predictions.jsonl, summary.json/.md and skipped.jsonl; default
            `<trainer.default_root_dir>/eval/<benchmark>-<split>` ("test" for plain record files).
        group_by: record fields (metadata keys) to break accuracy down by; None takes the benchmark's own
            (e.g. problem_version and subject for MathVerse), [] none.
        max_new_tokens: completion limit when testing (the paper: 4096); None keeps rollout.max_new_tokens.
        temperature: 0 decodes greedily (the paper's protocol); above 0 samples one completion per item.
        final_line_fallback: read a response's final line when it has neither an answer block nor a box.
        resume: continue from the rows already in output_dir (rows from another model, checkpoint or
            decoding there are an error); False deletes them and starts over.
        answer_judge: optional LLM second stage for responses the rules cannot settle; its use is counted.
        print_table: print the summary table when the run ends.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        group_by: list[str] | None = None,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        final_line_fallback: bool = True,
        resume: bool = True,
        answer_judge: AnswerJudge | None = None,
        print_table: bool = True,
    ):
        super().__init__()
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"model.evaluation.max_new_tokens must be >= 1 (or null), got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"model.evaluation.temperature must be >= 0 (0 is greedy), got {temperature}")
        self.output_dir = output_dir
        self.group_by = group_by
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.final_line_fallback = final_line_fallback
        self.resume = resume
        self.answer_judge = answer_judge
        self.print_table = print_table
        self.accuracy = AnswerAccuracy()
        self.format_rate = FormatCompliance()
        self.response_length = MeanResponseLength()
        self.perception = PerceptionScore()
        self.grouped = torch.nn.ModuleDict()
        self.folder: Path | None = None
        self._order: list[str] = []
        self._done: dict[str, dict[str, Any]] = {}
        self._fields: list[str] = []
        self._counts: Counter = Counter()
        self._padding: tuple[int, int, int] | None = None
        self._position = 0
        self._resumed = 0
        self._counted: set[str] = set()
        self._nothing_pending = False
        self._datamodule_info: dict[str, Any] = {"benchmark": "test", "source": [], "skipped": []}

    # ----------------------------------------------------------------- lifecycle
    def setup(self, trainer, module) -> None:
        """Before dataloaders are built: output folder, finished rows, the test set without them, group vocabularies."""
        datamodule = getattr(trainer, "datamodule", None)
        dataset = (getattr(datamodule, "datasets", None) or {}).get("test")
        # `all_records` survives a second run on the same datamodule object, whose `records` this method filtered.
        records = list(getattr(dataset, "all_records", None) or getattr(dataset, "records", []))
        name = getattr(datamodule, "eval_name", "test")
        self.folder = Path(self.output_dir or Path(trainer.default_root_dir) / "eval" / name)
        self.folder.mkdir(parents=True, exist_ok=True)
        if trainer.is_global_zero and not self.resume:
            _clear(self.folder)
        trainer.strategy.barrier("evaluation_setup")
        results.repair_tail(results.shard_path(self.folder, trainer.global_rank))
        self._done = results.finished_rows(self.folder)[0] if self.resume else {}
        self._order = [r.id for r in records]
        self._fields = list(self.group_by if self.group_by is not None else getattr(datamodule, "default_group_by", []))
        # Vocabularies from the whole item set (not this process's share): the same on every process.
        self.grouped = torch.nn.ModuleDict({
            f"by_{k}": GroupedAccuracy({g for r in records for g in group_labels(_field(r, f))}, f)
            for k, f in enumerate(self._fields)
        }).to(module.device)
        if dataset is not None and self._done:
            remaining = [r for r in records if r.id not in self._done]
            # On an empty set Lightning skips the test loop and its hooks, and no summary would be written: keep
            # one finished item per process so the loop runs; `admit` drops it before anything is generated.
            dataset.all_records, dataset.records = records, remaining or records[: trainer.world_size]
        self._nothing_pending = bool(records) and all(r.id in self._done for r in records)
        self._datamodule_info = {
            "benchmark": name, "source": getattr(datamodule, "source_files", []),
            "skipped": [_skip_dict(s) for s in getattr(datamodule, "skipped", [])],
        }

    def start(self, trainer, module) -> None:
        """After the checkpoint is loaded: check provenance, count resumed rows (process 0), note the sampler's padding."""
        fingerprint = self._fingerprint(trainer, module)
        previous = results.read_json(self.folder / "run.json")
        if self._done and previous is not None:
            changed = {k: (previous.get(k), v) for k, v in fingerprint.items() if previous.get(k) != v}
            if changed:
                raise RuntimeError(
                    f"{self.folder} holds rows from a different evaluation ({changed}); set model.evaluation.output_dir "
                    "to another folder, or model.evaluation.resume=false to discard them"
                )
        trainer.strategy.barrier("evaluation_start")
        for metric in self._metrics():
            metric.reset()
        self._counts = Counter()
        wanted = set(self._order)
        resumed = [row for item_id, row in self._done.items() if item_id in wanted] if self._order else list(self._done.values())
        if trainer.is_global_zero:
            results.write_json(self.folder / "run.json", fingerprint)
            results.write_jsonl(self.folder / "skipped.jsonl", self._datamodule_info["skipped"])
            self._update_metrics(resumed)
        self._resumed = len(resumed)
        if self._resumed:
            rank_zero_info(f"resuming {self.folder}: {self._resumed} items already done, {len(self._order) - self._resumed} to go")
        self._padding = _padding_rule(trainer)
        self._position = 0

    @contextmanager
    def decoding(self, rollout):
        """Evaluation decoding on the rollout engine for the duration; yields whether to decode greedily."""
        saved = {k: getattr(rollout, k) for k in ("max_new_tokens", "temperature", "num_generations")}
        if self.max_new_tokens is not None:
            rollout.max_new_tokens = self.max_new_tokens
        if self.temperature > 0:
            rollout.temperature, rollout.num_generations = self.temperature, 1
        try:
            yield self.temperature == 0
        finally:
            for key, value in saved.items():
                setattr(rollout, key, value)

    def admit(self, batch: list, can_skip: bool) -> list:
        """Note which samples of a test batch count (not a sampler repeat, not done before); return what to generate.

        With `can_skip` only the counting samples are generated; otherwise (sharded generation, where every
        process must take part in every step) the whole batch is, and `record` leaves the others out.
        """
        counted = [s for s in batch if self._is_real_item() and s.record.id not in self._done]
        self._counted = {s.record.id for s in counted}
        if not can_skip or counted or self._nothing_pending:
            return counted if can_skip else batch
        # Only sampler repeats here, while other processes have real items: every process must log the step
        # metrics at least once or the epoch-end reduction fails, so one sample is generated (its row left out).
        return batch[:1]

    def record(self, module, rollouts, breakdown) -> None:
        """Grade one test batch, append its rows to this process's file and update the metrics."""
        if rollouts.group_size != 1:
            raise ValueError("evaluation expects one completion per item")
        keep = [s.record.id in self._counted for s in rollouts.samples]
        perception = _perception_scores(module, breakdown, len(rollouts))
        visual = _perception_output(module, breakdown)
        for key in _PERCEPTION_JUDGE if visual is not None else ():
            self._counts[f"perception_judge/{key}"] += int(visual.counters.get(f"judge/{key}", 0))
        rows = [self._row(rollouts, i, perception[i], _judged(module, visual, i)) for i in range(len(rollouts)) if keep[i]]
        if self.answer_judge is not None:
            self._counts.update(self.answer_judge.settle(rows, [s.record for s, k in zip(rollouts.samples, keep) if k]))
        results.append_rows(results.shard_path(self.folder, module.global_rank), rows)
        self._update_metrics(rows)

    def finish(self, trainer) -> dict[str, float]:
        """Reduce over processes (every process must call this); process 0 writes the outputs. Returns scalars to log."""
        with warnings.catch_warnings():  # a process that got no items computes too; its warning is noise
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            totals = {
                "accuracy": float(self.accuracy.compute()), "format_rate": float(self.format_rate.compute()),
                "mean_response_tokens": float(self.response_length.compute()), "perception": float(self.perception.compute()),
            }
            groups = {metric.field: metric.table() for metric in self.grouped.values()}
            with self.accuracy.sync_context(), self.perception.sync_context():  # the summed states, all processes
                counts = {"evaluated": int(self.accuracy.denominator), "correct": int(self.accuracy.numerator),
                          "perception_items": int(self.perception.denominator)}
            counts.update({key: self._reduce_count(key) for key in _COUNTERS})
            counts["perception_judge"] = _judge_summary({k: self._reduce_count(f"perception_judge/{k}") for k in _PERCEPTION_JUDGE})
        trainer.strategy.barrier("evaluation_finish")
        if trainer.is_global_zero:
            self._write_outputs(totals, groups, counts)
        return {k: v for k, v in totals.items() if not math.isnan(v)}

    # ----------------------------------------------------------------- helpers
    def _row(self, rollouts, i: int, perception: float, judged: dict[str, Any]) -> dict[str, Any]:
        record, response = rollouts.samples[i].record, rollouts.completions[i]
        graded = grade(response, record.answer, record.choices, record.metadata.get("precision"), self.final_line_fallback)
        row = {
            "id": record.id, "prompt": rollouts.prompts[i], "response": response, "extracted": graded.extracted,
            "extracted_from": graded.source, "gold": record.answer, "choices": record.choices,
            "correct": graded.correct, "settled": graded.settled, "judged_by": "rules",
            "format_ok": follows_format(response), "response_tokens": int(rollouts.completion_mask[i].sum()),
            "truncated": bool(rollouts.truncated[i]), "perception": None if math.isnan(perception) else perception,
            # Perception-correct: the response states every gold fact (None: no annotations, or no visual reward).
            "perception_correct": None if math.isnan(perception) else perception >= 1.0,
            # For `perception-rl view`: the question, the pictures the model was shown (None: given as bytes),
            # the gold facts, and what the perception judge said of each.
            "problem": record.problem, "images": _shown_images(rollouts.samples[i]),
            "annotations": list(record.annotations or []), **judged,
            **({"image_ablation": ablation} if (ablation := getattr(rollouts.samples[i], "ablation", "none")) != "none"
               else {}),
        }
        row.update({f: _field(record, f) for f in self._fields if f not in row})
        row["metadata"] = record.metadata
        return row

    def _update_metrics(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        correct = torch.tensor([bool(r["correct"]) for r in rows])
        self.accuracy.update(correct)
        self.format_rate.update(torch.tensor([bool(r.get("format_ok")) for r in rows]))
        self.response_length.update(torch.tensor([float(r.get("response_tokens") or 0) for r in rows]))
        self.perception.update(torch.tensor([math.nan if r.get("perception") is None else float(r["perception"]) for r in rows]))
        for metric in self.grouped.values():
            metric.update([_row_field(r, metric.field) for r in rows], correct)
        self._counts["llm_judged"] += sum(r.get("judged_by") == "llm" for r in rows)
        # The paper's central quantity: of the right answers the judge scored, how many state wrong perception.
        scored = [r for r in rows if r.get("perception_correct") is not None]
        self._counts["perception_correct"] += sum(r["perception_correct"] for r in scored)
        self._counts["right_and_scored"] += sum(bool(r["correct"]) for r in scored)
        self._counts["right_answer_wrong_perception"] += sum(bool(r["correct"]) and not r["perception_correct"]
                                                             for r in scored)

    def _is_real_item(self) -> bool:
        """False for the items the distributed sampler repeats to even out the processes' shares (call once per sample)."""
        position, self._position = self._position, self._position + 1
        if self._padding is None:
            return True
        length, rank, world = self._padding
        return rank + position * world < length

    def _reduce_count(self, key: str) -> int:
        value = torch.tensor(float(self._counts.get(key, 0)), dtype=torch.float64, device=self.accuracy.numerator.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(value)
        return int(value)

    def _metrics(self) -> list:
        return [self.accuracy, self.format_rate, self.response_length, self.perception, *self.grouped.values()]

    def _fingerprint(self, trainer, module) -> dict[str, Any]:
        """What determines the rows: resuming with any of it changed would mix two evaluations."""
        checkpoint = trainer.ckpt_path
        rollout = module.rollout
        return {
            "benchmark": self._datamodule_info["benchmark"], "source": self._datamodule_info["source"],
            "model_path": str(Path(module.policy.model_path).resolve()) if getattr(module.policy, "model_path", None) else None,
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint and Path(str(checkpoint)).exists() else checkpoint,
            "max_new_tokens": self.max_new_tokens or rollout.max_new_tokens, "temperature": self.temperature,
            "format_instruction": getattr(getattr(trainer, "datamodule", None), "format_instruction", None),
            "final_line_fallback": self.final_line_fallback,
            # Only when set, so evaluations written before the option existed still resume.
            **({"image_ablation": ablation} if (ablation := getattr(getattr(trainer, "datamodule", None),
                                                                     "image_ablation", "none")) != "none" else {}),
        }

    def _write_outputs(self, totals: dict, groups: dict, counts: dict) -> None:
        predictions, outside = results.merge_rows(self.folder, self._order)
        skipped = self._datamodule_info["skipped"]
        summary = {
            "benchmark": self._datamodule_info["benchmark"], "model": _model_label(results.read_json(self.folder / "run.json")),
            "items": max(len(self._order), counts["evaluated"]) + len(skipped), "skipped": len(skipped),
            "not_evaluated": max(0, len(self._order) - counts["evaluated"]),
            "skipped_reasons": dict(Counter(reason_kind(s["reason"]) for s in skipped)),
            **counts, **totals, "resumed_items": self._resumed, "groups": groups,
            "predictions": str(predictions), "source": self._datamodule_info["source"],
        }
        if outside:
            summary["rows_outside_item_set"] = outside
        table = results.markdown_table(summary)
        results.write_json(self.folder / "summary.json", summary)
        results.write_atomic(self.folder / "summary.md", table)
        if self.print_table:
            print(f"\n{table}\nrows: {predictions}\nsummary: {self.folder / 'summary.json'}", flush=True)


def _field(record, name: str) -> Any:
    """A record's value for a grouping field: metadata first, then other record fields."""
    if name in record.metadata:
        return record.metadata[name]
    return record.extra.get(name, getattr(record, name, None) if name in ("answer", "id") else None)


def _row_field(row: dict[str, Any], name: str) -> Any:
    return row[name] if name in row else (row.get("metadata") or {}).get(name)


def _perception_output(module, breakdown):
    """The first perception reward's output for this batch, or None without one."""
    from perception_rl.rewards.perception import PerceptionReward

    for reward in getattr(module, "rewards", []):
        if isinstance(reward, PerceptionReward) and reward.name in breakdown.outputs:
            return breakdown.outputs[reward.name]
    return None


def _shown_images(sample) -> list[str | None]:
    """Paths of the images the model was shown: the record's, another record's under `shuffled`, none under
    `blank` (a white canvas)."""
    if getattr(sample, "ablation", "none") == "blank":
        return []
    source = getattr(sample, "shown", None) or sample.record
    return [str(Path(image).resolve()) if isinstance(image, str) else None for image in source.images]


def _judged(module, visual, i: int) -> dict[str, Any]:
    """Completion i's perception verdict for its row: per-item verdicts, failure kind and raw reply (empty
    without a perception reward)."""
    verdicts = getattr(visual, "verdicts", None) if visual is not None else None
    if not verdicts:
        return {}
    from perception_rl.rewards.perception import PerceptionReward

    judge = next(r.judge for r in module.rewards if isinstance(r, PerceptionReward))
    verdict = verdicts[i]
    return {"perception_items": list(judge.item_verdicts(verdict)), "judge_failure": verdict.failure,
            "judge_reply": verdict.reply}


def _perception_scores(module, breakdown, n: int) -> list[float]:
    """Per-item score of the first perception reward, NaN where the item has no annotations, where its judge
    abstained, or without such a reward."""
    output = _perception_output(module, breakdown)
    if output is None:
        return [math.nan] * n
    scores = output.logged_scores() if hasattr(output, "logged_scores") else output.scores
    return [float(v) for v in scores.float().tolist()]


def _judge_summary(counts: dict[str, int]) -> dict[str, Any] | None:
    """The perception judge's requests, failures by kind and item outcomes in this run; None if it sent none."""
    if not counts["requests"]:
        return None
    return {
        "requests": counts["requests"], "failures": counts["failures"],
        "failures_by_kind": {k: counts[f"failures/{k}"] for k in FAILURE_KINDS if counts[f"failures/{k}"]},
        "items": {o: counts[f"items/{o}"] for o in ITEM_OUTCOMES},
    }


def _padding_rule(trainer) -> tuple[int, int, int] | None:
    """(items, rank, processes) when the test loader is Lightning's padding DistributedSampler in order; else None."""
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler) and not sampler.shuffle and not sampler.drop_last:
        return len(sampler.dataset), sampler.rank, sampler.num_replicas
    return None


def _skip_dict(skip) -> dict[str, Any]:
    """A benchmark adapter's `Skipped` or a record file's `Skip` (invalid_records=skip) as one row."""
    return {"id": getattr(skip, "id", None), "reason": skip.reason, "source": getattr(skip, "source", getattr(skip, "where", ""))}


def _model_label(run: dict | None) -> str:
    if not run:
        return "?"
    if run.get("checkpoint"):
        return str(run["checkpoint"])
    return Path(str(run.get("model_path") or "?")).name


def _clear(folder: Path) -> None:
    """Remove a previous evaluation's outputs (resume=false)."""
    for path in [*folder.glob("predictions*.jsonl"), folder / "summary.json", folder / "summary.md", folder / "run.json"]:
        if path.is_file():
            path.unlink()
    for stale in folder.glob(".*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
