"""Perception-R1 in miniature: accuracy-only GRPO against the full Perception-R1 reward, on the dots task, on CPU.

    python benchmarks/perception_demo/run.py --out runs/perception_demo         # about 10 minutes on 2 cores
    python benchmarks/perception_demo/run.py --out runs/pd3 --seeds 0 1 2       # three seeds per arm, about 22 minutes

Every step is a `perception-rl` command (printed as it runs; its output goes to `<out>/logs/`):

1. `warm-start`: the demo's tiny Qwen2.5-VL, warm-started by a teacher that takes orange dots for red ones.
2. `fit`, twice per seed, same seed and budget (`--steps`, the demo's 200 by default), from that warm start:
   `accuracy_only` (accuracy 0.9 + format 0.1, accuracy_only.yaml) and `perception_r1` (the demo config:
   + visual perception reward 0.5 judged by `RuleJudge` on the gold annotations + repetition penalty).
   A checkpoint every 50 steps (checkpoints.yaml).
3. `test` on the held-out split (200 items, greedy): the warm start and every checkpoint of both arms. Each
   row carries `correct` (the answer) and `perception_correct` (the response states every gold fact).
4. `compare`: the exact McNemar test on `correct` and on `perception_correct`, between the arms at the end of
   the budget and between each arm and the warm start.
5. `report.md` with the tables and plots (`training_curves.png`, `held_out.png`), and `results.json` with
   every number and a fingerprint of the predictions (the same seeds on the same machine give the same file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
ARMS = {"accuracy_only": [str(HERE / "accuracy_only.yaml")], "perception_r1": []}
LABELS = {"warm_start": "warm start (before RL)", "accuracy_only": "accuracy-only GRPO",
          "perception_r1": "Perception-R1 reward"}
KEYS = {"correct": "accuracy", "perception_correct": "perception-correct"}
CHECKPOINT_EVERY = 50  # checkpoints.yaml's every_n_train_steps


def cli(log: Path, *args: str) -> str:
    """Run `perception-rl ARGS`, its output into `log`; stop the script on failure."""
    print("$ perception-rl " + " ".join(args), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, "-m", "perception_rl.cli", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=False)  # the log is written first
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"failed (exit {result.returncode}); see {log}:\n{result.stderr[-3000:]}")
    return result.stdout


# ------------------------------------------------------------------------------------------------ steps
def train(out: Path, warm: Path, arm: str, seed: int, steps: int) -> Path:
    root = out / "runs" / f"{arm}-seed{seed}"
    if not (root / "hf_model" / "config.json").is_file():
        # An interrupted fit left a partial run (and maybe evaluations of its checkpoints): start it afresh.
        for stale in [root, *(out / "eval").glob(f"{arm}-seed{seed}-step*")]:
            shutil.rmtree(stale, ignore_errors=True)
        cli(out / "logs" / f"fit-{arm}-seed{seed}.log", "fit", "--config", str(DEMO),
            *[a for c in ARMS[arm] for a in ("--config", c)], "--config", str(HERE / "checkpoints.yaml"),
            f"--seed_everything={seed}", f"--trainer.max_steps={steps}", f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false", f"--model.policy.model_path={warm}",
            f"--data.data_dir={out / 'dots'}")
    return root


def evaluate(out: Path, warm: Path, name: str, checkpoint: Path | None = None) -> list[dict]:
    """Held-out rows of the warm start (no checkpoint) or of a checkpoint, scored with the demo's rewards."""
    root = out / "eval" / name
    rows_file = root / "eval" / "test" / "predictions.jsonl"
    if not rows_file.is_file():
        args = ["test", "--config", str(DEMO), f"--model.policy.model_path={warm}",
                f"--trainer.default_root_dir={root}", f"--data.data_dir={out / 'dots'}",
                "--trainer.enable_progress_bar=false", "--model.evaluation.print_table=false"]
        cli(out / "logs" / f"test-{name}.log", *args, *([f"--ckpt_path={checkpoint}"] if checkpoint else []))
    return [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]


def compare(out: Path, a: str, b: str, key: str) -> dict:
    files = [out / "eval" / n / "eval" / "test" / "predictions.jsonl" for n in (a, b)]
    target = out / "compare" / f"{a}--{b}--{key}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    cli(out / "logs" / f"compare-{a}--{b}--{key}.log", "compare", *map(str, files), "--key", key,
        "--json", str(target), "--strict")
    return json.loads(target.read_text())["overall"]


def along_mcnemar(out: Path, seed: int, results: dict) -> dict[str, dict[str, float]]:
    """Arm vs arm at every checkpoint step: McNemar p on each outcome (the same test as `perception-rl compare`)."""
    from perception_rl.eval.compare import compare_rows, load_rows

    tests = {}
    for step in results["held_out_along"][f"accuracy_only-seed{seed}"]:
        files = [out / "eval" / f"{arm}-seed{seed}-step{step}" / "eval" / "test" / "predictions.jsonl" for arm in ARMS]
        tests[str(step)] = {
            key: compare_rows(*(load_rows(f, key) for f in files), key)["overall"].p_value for key in KEYS
        }
    return tests


def checkpoints(run: Path) -> dict[int, Path]:
    found = (run / "logs" / "version_0" / "checkpoints").glob("step=*.ckpt")
    return dict(sorted((int(p.stem.split("=")[1]), p) for p in found))


def rates(rows: list[dict]) -> dict[str, float]:
    n = len(rows)
    by_kind = {}
    for kind in sorted({r["metadata"]["task"] for r in rows}):
        subset = [r for r in rows if r["metadata"]["task"] == kind]
        by_kind[kind] = sum(r["correct"] for r in subset) / len(subset)
    return {
        "items": n, "accuracy": sum(r["correct"] for r in rows) / n,
        "perception_correct": sum(bool(r["perception_correct"]) for r in rows) / n,
        "perception": sum(r["perception"] for r in rows) / n, "format": sum(r["format_ok"] for r in rows) / n,
        "accuracy_by_kind": by_kind,
    }


def curve(run: Path) -> dict[str, list[float]]:
    lines = (run / "reward_curve.csv").read_text().splitlines()
    header = lines[0].split(",")
    columns = list(zip(*[map(float, line.split(",")) for line in lines[1:]]))
    return {name: list(values) for name, values in zip(header, columns)}


# ------------------------------------------------------------------------------------------------ plots
def plot(out: Path, results: dict, seeds: list[int]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: the report has no plots")
        return []
    from perception_rl.callbacks import moving_average

    colours = {"accuracy_only": "tab:orange", "perception_r1": "tab:blue"}
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for arm, colour in colours.items():
        for k, seed in enumerate(seeds):
            series = results["curves"][f"{arm}-seed{seed}"]
            window = max(1, len(series["step"]) // 20)
            for axis, name in zip(axes, ("accuracy", "visual")):
                axis.plot(series["step"], moving_average(series[name], window), color=colour,
                          alpha=0.9 if k == 0 else 0.5, label=LABELS[arm] if k == 0 else None)
    for axis, title in zip(axes, ("answer accuracy (sampled, training)", "visual facts stated (sampled, training)")):
        axis.set_title(title)
        axis.set_xlabel("GRPO step")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(out / "training_curves.png", dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for axis, key in zip(axes, ("accuracy", "perception_correct")):
        start = results["held_out"]["warm_start"][key]
        for arm, colour in colours.items():
            for k, seed in enumerate(seeds):
                points = results["held_out_along"][f"{arm}-seed{seed}"]
                steps = [0, *[int(s) for s in points]]
                axis.plot(steps, [start, *[p[key] for p in points.values()]], "o-", color=colour,
                          alpha=0.9 if k == 0 else 0.5, label=LABELS[arm] if k == 0 else None)
        items = results["held_out"]["warm_start"]["items"]
        axis.set_title(f"held-out {KEYS['correct' if key == 'accuracy' else key]} (greedy, {items} items)")
        axis.set_xlabel("GRPO step")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(out / "held_out.png", dpi=100)
    plt.close(figure)
    return ["training_curves.png", "held_out.png"]


# ------------------------------------------------------------------------------------------------ report
def _table(result: dict) -> str:
    return (f"| {result['both']} | {result['b']} | {result['c']} | {result['neither']} | {result['p_value']:.3g} |")


def report(out: Path, results: dict, seeds: list[int], steps: int, plots: list[str], seconds: float) -> str:
    held = results["held_out"]
    lines = [
        "# Perception-R1 in miniature: accuracy-only GRPO vs the Perception-R1 reward",
        "",
        ("Generated by `python benchmarks/perception_demo/run.py --out OUT "
         f"--steps {steps} --seeds {' '.join(map(str, seeds))}`."),
        "",
        "Task: count the red and blue dots in an 84 x 84 picture (3 x 3 grid; 0-2 orange dots as distractors)",
        "and give their total or difference. Policy: a 0.6 M-parameter Qwen2.5-VL warm-started by a teacher that",
        "takes each orange dot for a red one 3 times in 4, so it starts out over-counting red. Both arms: the same",
        f"warm start, seed, data order and budget ({steps} GRPO steps, 8 prompts x 8 samples, lr 1e-4). Held-out:",
        f"{held['warm_start']['items']} items, greedy decoding, scored by `perception-rl test`; `perception_correct`",
        "= the response states both gold facts (checked by `RuleJudge`, the judge the Perception-R1 arm trains with).",
        "",
        "## Held-out results",
        "",
        "| model | accuracy | perception-correct | mean perception score | format | accuracy: total / difference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = dict(held)
    if len(seeds) > 1:
        for arm in ARMS:
            runs = [held[f"{arm}-seed{seed}"] for seed in seeds]
            mean = {k: sum(r[k] for r in runs) / len(runs)
                    for k in ("accuracy", "perception_correct", "perception", "format")}
            mean["accuracy_by_kind"] = {kind: sum(r["accuracy_by_kind"][kind] for r in runs) / len(runs)
                                        for kind in runs[0]["accuracy_by_kind"]}
            rows[f"{arm}, mean of {len(seeds)} seeds"] = mean
    for name, r in rows.items():
        kinds = " / ".join(f"{v:.3f}" for v in r["accuracy_by_kind"].values())
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r['perception_correct']:.3f} | {r['perception']:.3f} | "
                     f"{r['format']:.3f} | {kinds} |")
    lines += ["", "Along the runs (held-out, greedy; p: exact McNemar, accuracy-only vs Perception-R1 at that step):",
              "",
              "| seed | step | accuracy: acc-only / P-R1 | p | perception-correct: acc-only / P-R1 | p |",
              "|---:|---:|---:|---:|---:|---:|"]
    for seed in seeds:
        for step, tests in results["along_mcnemar"][str(seed)].items():
            acc, full = (results["held_out_along"][f"{arm}-seed{seed}"][int(step)] for arm in ARMS)
            lines.append(f"| {seed} | {step} | {acc['accuracy']:.3f} / {full['accuracy']:.3f} | "
                         f"{tests['correct']:.3g} | {acc['perception_correct']:.3f} / "
                         f"{full['perception_correct']:.3f} | {tests['perception_correct']:.3g} |")
    lines += ["", "## McNemar tests (`perception-rl compare`, exact two-sided)", "",
              "b = A right and B wrong, c = A wrong and B right.", "",
              "| A | B | outcome | both right | b | c | both wrong | p |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for test in results["mcnemar"]:
        lines.append(f"| {test['a']} | {test['b']} | {KEYS[test['key']]} " + _table(test["result"]))
    if plots:
        lines += ["", "## Plots", "", *[f"![{p}]({p})" for p in plots]]
    lines += ["", "## Reading", "", *summary_sentences(results, seeds), "",
              f"Predictions fingerprint (sha256 over every predictions file): `{results['fingerprint']}`.", "",
              f"Wall time of this run: {seconds / 60:.1f} min (not part of the fingerprint).", ""]
    return "\n".join(lines)


def summary_sentences(results: dict, seeds: list[int]) -> list[str]:
    sentences = []
    held = results["held_out"]
    for seed in seeds:
        acc, full = held[f"accuracy_only-seed{seed}"], held[f"perception_r1-seed{seed}"]
        tests = {(t["key"]): t["result"] for t in results["mcnemar"]
                 if t["a"] == f"accuracy_only-seed{seed}" and t["b"] == f"perception_r1-seed{seed}"}
        sentences.append(
            f"- Seed {seed}: from the warm start's {held['warm_start']['accuracy']:.3f} accuracy and "
            f"{held['warm_start']['perception_correct']:.3f} perception-correct, accuracy-only GRPO reaches "
            f"{acc['accuracy']:.3f} / {acc['perception_correct']:.3f} and the Perception-R1 reward "
            f"{full['accuracy']:.3f} / {full['perception_correct']:.3f} (arm vs arm: accuracy p = "
            f"{tests['correct']['p_value']:.3g}, perception p = {tests['perception_correct']['p_value']:.3g})."
        )
    return sentences


def fingerprint(out: Path, names: list[str]) -> str:
    """A hash of the predictions of the evaluations `names` (this invocation's, not others in `out`)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode())
        digest.update((out / "eval" / name / "eval" / "test" / "predictions.jsonl").read_bytes())
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "perception_demo", help="output folder")
    parser.add_argument("--steps", type=int, default=200, help="GRPO steps per run (the demo's budget)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per arm per seed")
    args = parser.parse_args(argv)
    if args.steps < CHECKPOINT_EVERY or args.steps % CHECKPOINT_EVERY:
        parser.error(f"--steps must be a positive multiple of {CHECKPOINT_EVERY} (checkpoints.yaml saves every "
                     f"{CHECKPOINT_EVERY} steps, and the last one is the end of the budget), got {args.steps}")
    out, start = args.out.resolve(), time.perf_counter()
    # Runs found in `out` are reused, so they must have been made with the same budget.
    stamp = out / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text())["steps"] != args.steps:
        sys.exit(f"{out} holds runs of {json.loads(stamp.read_text())['steps']} steps, not --steps {args.steps}: "
                 "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"steps": args.steps}) + "\n")
    warm = out / "warm_start"
    if not (warm / "config.json").is_file():
        cli(out / "logs" / "warm-start.log", "warm-start", str(warm))
    results: dict = {"steps": args.steps, "seeds": args.seeds, "held_out": {}, "held_out_along": {}, "curves": {},
                     "mcnemar": []}
    results["held_out"]["warm_start"] = rates(evaluate(out, warm, "warm_start"))
    for seed in args.seeds:
        for arm in ARMS:
            run = train(out, warm, arm, seed, args.steps)
            name = f"{arm}-seed{seed}"
            results["curves"][name] = curve(run)
            along = {step: rates(evaluate(out, warm, f"{name}-step{step}", path))
                     for step, path in checkpoints(run).items()}
            results["held_out_along"][name] = along
            results["held_out"][name] = along[max(along)]
    results["along_mcnemar"] = {str(seed): along_mcnemar(out, seed, results) for seed in args.seeds}
    finals = {name: f"{name}-step{max(along)}" for name, along in results["held_out_along"].items()}
    for seed in args.seeds:
        pairs = [("accuracy_only", "perception_r1"), ("warm_start", "accuracy_only"), ("warm_start", "perception_r1")]
        for a, b in pairs:
            names = [n if n == "warm_start" else f"{n}-seed{seed}" for n in (a, b)]
            folders = [n if n == "warm_start" else finals[n] for n in names]
            for key in KEYS:
                result = compare(out, *folders, key)
                results["mcnemar"].append({"a": names[0], "b": names[1], "key": key, "result": result})
    evaluated = ["warm_start", *(f"{name}-step{step}" for name, along in results["held_out_along"].items()
                                 for step in along)]
    results["fingerprint"] = fingerprint(out, evaluated)
    plots = plot(out, results, args.seeds)
    seconds = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(report(out, results, args.seeds, args.steps, plots, seconds))
    print(f"\nreport: {out / 'report.md'}  (wall time {seconds / 60:.1f} min, fingerprint {results['fingerprint']})")
    print("\n".join(summary_sentences(results, args.seeds)))


if __name__ == "__main__":
    main()
