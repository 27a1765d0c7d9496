"""Perception-R1 in miniature: does accuracy-only GRPO reward right answers reached through wrong perception?

    python benchmarks/perception_demo/run.py --out runs/perception_demo          # 5 seeds, about 25 minutes on 2 cores
    python benchmarks/perception_demo/run.py --out runs/pd1 --seeds 0            # one seed, about 6 minutes

The task (`compare` in perception_rl/data/synthetic.py): "Are there more red dots or more blue dots?", with
counts two or more apart, so the warm start's perception flaw (it takes the orange dot for red) never costs
the answer: a right answer is reachable with wrong perception. Every step is a `perception-rl` command
(printed as it runs; its output goes to `<out>/logs/`):

1. `warm-start`: the tiny Qwen2.5-VL, warm-started by a teacher that takes the orange dot for red 3 times in 4
   and leans to "red" in its conclusion (compare.yaml).
2. `fit`, once per arm per seed, same seed, data order and budget (`--steps`), from that warm start:
   - `accuracy_only`: accuracy 0.9 + format 0.1 (accuracy_only.yaml), the paper's RLVR baseline;
   - `perception_r1`: + visual perception reward 0.5 judged by `RuleJudge` on the gold facts + repetition penalty;
   - `shuffled_images`: the Perception-R1 reward with every training picture replaced by another item's
     (`data.image_ablation=shuffled`), a control: reward gained without the right picture is a shortcut.
   A checkpoint every 50 steps (checkpoints.yaml).
3. `test` on the held-out split (200 items, pictures deduplicated against the training ones, greedy, real
   images for every arm): the warm start and every checkpoint. Each row carries `correct` (the answer) and
   `perception_correct` (the response states every gold fact, by the same `RuleJudge` check).
4. Exact McNemar tests (`perception_rl.eval.compare`, as `perception-rl compare`) on `correct` and on
   `perception_correct` for warm start vs accuracy-only, warm start vs Perception-R1 and accuracy-only vs
   Perception-R1 (and the control against the warm start), per seed and pooled over every paired held-out
   item of every seed.
5. `<out>/report.md` (tables and `held_out.png`) and `<out>/results.json` (per seed and pooled: b, c and p of
   every comparison and outcome; held-out rates; the share of right answers with wrong perception; training
   rewards; a fingerprint of the predictions: the same seeds on the same machine give the same file).
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

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
TASK = HERE / "compare.yaml"
# Each arm: the configs and overrides it adds to the demo config and the task.
ARMS = {
    "accuracy_only": [f"--config={HERE / 'accuracy_only.yaml'}"],
    "perception_r1": [],
    "shuffled_images": ["--data.image_ablation=shuffled"],
}
LABELS = {"warm_start": "warm start (before RL)", "accuracy_only": "accuracy-only GRPO",
          "perception_r1": "Perception-R1 reward", "shuffled_images": "control: P-R1 reward, shuffled images"}
COLOURS = {"accuracy_only": "tab:orange", "perception_r1": "tab:blue", "shuffled_images": "tab:gray"}
LINES = {"accuracy_only": "o--", "perception_r1": "o-", "shuffled_images": "o:"}  # dashed: visible where lines meet
KEYS = {"correct": "accuracy", "perception_correct": "perception-correct"}
COMPARISONS = [("warm_start", "accuracy_only"), ("warm_start", "perception_r1"), ("accuracy_only", "perception_r1"),
               ("warm_start", "shuffled_images")]
CHECKPOINT_EVERY = 50  # checkpoints.yaml's every_n_train_steps


def cli(log: Path, *args: str) -> str:
    """Run `perception-rl ARGS`, its output into `log` and its duration into `<out>/logs/seconds.json` (so a
    rerun that reuses the runs still reports what they cost); stop the script on failure."""
    print("$ perception-rl " + " ".join(args), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "perception_rl.cli", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=False)  # the log is written first
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"failed (exit {result.returncode}); see {log}:\n{result.stderr[-3000:]}")
    seconds = log.parent / "seconds.json"
    spent = json.loads(seconds.read_text()) if seconds.is_file() else {}
    spent[log.stem] = round(time.perf_counter() - start, 1)
    seconds.write_text(json.dumps(spent, indent=1) + "\n")
    return result.stdout


def task_args(out: Path) -> list[str]:
    """The demo config with the compare task, its warm start and data folder inside `out`."""
    return ["--config", str(DEMO), "--config", str(TASK), f"--model.policy.model_path={out / 'warm_start'}",
            f"--data.data_dir={out / 'data'}", "--trainer.enable_progress_bar=false"]


# ------------------------------------------------------------------------------------------------ steps
def train(out: Path, arm: str, seed: int, steps: int) -> Path:
    root = out / "runs" / f"{arm}-seed{seed}"
    if not (root / "hf_model" / "config.json").is_file():
        # An interrupted fit left a partial run (and maybe evaluations of its checkpoints): start it afresh.
        for stale in [root, *(out / "eval").glob(f"{arm}-seed{seed}-step*")]:
            shutil.rmtree(stale, ignore_errors=True)
        cli(out / "logs" / f"fit-{arm}-seed{seed}.log", "fit", *task_args(out), *ARMS[arm],
            "--config", str(HERE / "checkpoints.yaml"), f"--seed_everything={seed}", f"--trainer.max_steps={steps}",
            f"--trainer.default_root_dir={root}")
    return root


def predictions(out: Path, name: str) -> Path:
    return out / "eval" / name / "eval" / "test" / "predictions.jsonl"


def evaluate(out: Path, name: str, checkpoint: Path | None = None) -> list[dict]:
    """Held-out rows of the warm start (no checkpoint) or of a checkpoint, scored with the demo's rewards."""
    rows_file = predictions(out, name)
    if not rows_file.is_file():
        args = ["test", *task_args(out), f"--trainer.default_root_dir={out / 'eval' / name}",
                "--model.evaluation.print_table=false", *([f"--ckpt_path={checkpoint}"] if checkpoint else [])]
        cli(out / "logs" / f"test-{name}.log", *args)
    return [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]


def checkpoints(run: Path) -> dict[int, Path]:
    found = (run / "logs" / "version_0" / "checkpoints").glob("step=*.ckpt")
    return dict(sorted((int(p.stem.split("=")[1]), p) for p in found))


def rates(rows: list[dict]) -> dict:
    """Held-out rates of one evaluation, with the paper's central quantity: of the right answers, the share
    whose stated perception is wrong."""
    n = len(rows)
    right = [r for r in rows if r["correct"]]
    right_wrong = sum(not r["perception_correct"] for r in right)
    return {
        "items": n, "accuracy": len(right) / n,
        "perception_correct": sum(bool(r["perception_correct"]) for r in rows) / n,
        "perception": sum(r["perception"] for r in rows) / n, "format": sum(r["format_ok"] for r in rows) / n,
        "right_answers": len(right), "right_answer_wrong_perception": right_wrong,
        "right_wrong_share": right_wrong / len(right) if right else None,
    }


def training_reward(run: Path) -> dict[str, dict[str, float]]:
    """Mean sampled reward terms over the first and the last tenth of the steps (reward_curve.csv)."""
    lines = (run / "reward_curve.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, map(float, line.split(",")))) for line in lines[1:]]
    tenth = max(1, len(rows) // 10)
    mean = lambda part: {k: sum(r[k] for r in part) / len(part) for k in header if k != "step"}  # noqa: E731
    return {"first_tenth": mean(rows[:tenth]), "last_tenth": mean(rows[-tenth:])}


# ------------------------------------------------------------------------------------------------ McNemar
def outcomes(out: Path, name: str, key: str) -> dict[str, bool]:
    from perception_rl.eval.compare import load_rows

    return {item: bool(row[key]) for item, row in load_rows(predictions(out, name), key).items()}


def paired_test(pairs: list[tuple[dict[str, bool], dict[str, bool]]]) -> dict:
    """The exact McNemar test over the items of every (A, B) pair of outcome tables, paired by id."""
    from perception_rl.eval.compare import mcnemar

    a, b = [], []
    for first, second in pairs:
        if first.keys() != second.keys():
            raise ValueError(f"the evaluations hold different items: {sorted(first.keys() ^ second.keys())[:5]}")
        a += [first[i] for i in sorted(first)]
        b += [second[i] for i in sorted(first)]
    result = mcnemar(a, b)
    return {"items": result.n, "both": result.both, "b": result.b, "c": result.c, "neither": result.neither,
            "p": result.p_value}


def mcnemar_tables(out: Path, finals: dict[str, str], seeds: list[int]) -> dict:
    """Per seed and pooled: {comparison: {key: test}}; b = A right and B wrong, c = A wrong and B right."""
    def name(arm: str, seed: int) -> str:
        return "warm_start" if arm == "warm_start" else finals[f"{arm}-seed{seed}"]

    per_seed: dict = {}
    pooled: dict = {}
    for a, b in COMPARISONS:
        label = f"{a} vs {b}"
        for key in KEYS:
            pairs = [(outcomes(out, name(a, s), key), outcomes(out, name(b, s), key)) for s in seeds]
            for seed, pair in zip(seeds, pairs):
                per_seed.setdefault(str(seed), {}).setdefault(label, {})[key] = paired_test([pair])
            pooled.setdefault(label, {})[key] = paired_test(pairs)
    return {"per_seed": per_seed, "pooled": pooled}


# ------------------------------------------------------------------------------------------------ plot
def plot(out: Path, results: dict, seeds: list[int]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: the report has no plot")
        return None
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    panels = (("accuracy", "held-out accuracy"), ("perception_correct", "held-out perception-correct"),
              ("right_wrong_share", "right answers with wrong perception"))
    start = results["held_out"]["warm_start"]
    for axis, (key, title) in zip(axes, panels):
        for arm, colour in COLOURS.items():
            series = []
            for seed in seeds:
                along = results["held_out_along"][f"{arm}-seed{seed}"]
                steps = [0, *map(int, along)]
                values = [start[key], *[point[key] for point in along.values()]]
                axis.plot(steps, values, color=colour, alpha=0.25, linewidth=1)
                series.append(values)
            mean = [sum(v) / len(v) for v in zip(*series)]
            axis.plot(steps, mean, LINES[arm], color=colour, linewidth=2, label=f"{LABELS[arm]} (mean)",
                      zorder=3 if arm == "accuracy_only" else 2)  # dashed on top, where it meets another line
        axis.set_title(title)
        axis.set_xlabel("GRPO step")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    seeds_text = "1 seed" if len(seeds) == 1 else f"{len(seeds)} seeds (faint: each seed)"
    figure.suptitle(f"{seeds_text}; {start['items']} held-out items, greedy", fontsize=10)
    figure.tight_layout()
    figure.savefig(out / "held_out.png", dpi=100)
    plt.close(figure)
    return "held_out.png"


# ------------------------------------------------------------------------------------------------ report
def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


def arm_means(results: dict, seeds: list[int]) -> dict[str, dict]:
    """Warm start and each arm's final held-out rates, averaged over the seeds (with the per-seed range)."""
    rows = {"warm_start": {k: (v, v, v) for k, v in results["held_out"]["warm_start"].items() if k in _RATE_KEYS}}
    for arm in ARMS:
        runs = [results["held_out"][f"{arm}-seed{s}"] for s in seeds]
        rows[arm] = {k: (_mean([r[k] for r in runs]), min(r[k] or 0 for r in runs), max(r[k] or 0 for r in runs))
                     for k in _RATE_KEYS}
    return rows


_RATE_KEYS = ("accuracy", "perception_correct", "right_wrong_share")


def report(results: dict, seeds: list[int], steps: int, figure: str | None) -> str:
    pooled = results["mcnemar"]["pooled"]
    lines = [
        "# Perception-R1 in miniature: accuracy-only GRPO vs the Perception-R1 reward",
        "",
        f"Generated by `python benchmarks/perception_demo/run.py --out OUT --steps {steps} --seeds "
        f"{' '.join(map(str, seeds))}`; its commands took {sum(results['commands_s'].values()) / 60:.1f} min "
        f"(fit {results['commands_s']['fit'] / 60:.1f}, test {results['commands_s']['test'] / 60:.1f}, warm start "
        f"{results['commands_s']['warm_start'] / 60:.1f}).",
        "",
        "Task: \"Are there more red dots or more blue dots?\" on an 84 x 84 picture (counts two or more apart, four in five",
        "pictures with one orange dot). The warm start takes the orange dot for red 3 times in 4, which never changes",
        "the answer, and leans to \"red\" in its conclusion. Every arm: the same warm start, seed, data order and budget",
        f"({steps} GRPO steps, 8 prompts x 8 samples, lr 1e-4). Held-out: {results['held_out']['warm_start']['items']} "
        "items whose pictures are not among the training ones, greedy, `perception-rl test`. Perception-correct: the",
        "response states both gold facts (`RuleJudge`, the judge the Perception-R1 reward trains with).",
        "",
        "## McNemar, pooled over every paired held-out item of every seed",
        "",
        "b = A right and B wrong, c = A wrong and B right; exact two-sided p. The held-out items are the same in",
        "every seed, so the pooled test, which treats each (seed, item) pair as independent, overstates the",
        "evidence and does not cover seed-to-seed variation: read it with the per-seed tests below.",
        "",
        "| A vs B | items | accuracy b / c | p | perception-correct b / c | p |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, tests in pooled.items():
        acc, perc = tests["correct"], tests["perception_correct"]
        a, b = label.split(" vs ")
        lines.append(f"| {LABELS[a]} vs {LABELS[b]} | {acc['items']} | {acc['b']} / {acc['c']} | {_p(acc['p'])} | "
                     f"{perc['b']} / {perc['c']} | {_p(perc['p'])} |")
    lines += ["", "## Held-out rates at the end of the budget (mean of the seeds, [min, max])", "",
              "| model | accuracy | perception-correct | right answers with wrong perception |", "|---|---:|---:|---:|"]
    for arm, row in arm_means(results, seeds).items():
        cells = [f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]" if arm != "warm_start" else _fmt(m) for m, lo, hi in
                 (row[k] for k in _RATE_KEYS)]
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + " |")
    lines += ["", "## Per seed: accuracy-only vs Perception-R1", "",
              "| seed | accuracy: acc-only / P-R1 | b / c | p | perception-correct: acc-only / P-R1 | b / c | p |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for seed in seeds:
        acc, full = (results["held_out"][f"{arm}-seed{seed}"] for arm in ("accuracy_only", "perception_r1"))
        tests = results["mcnemar"]["per_seed"][str(seed)]["accuracy_only vs perception_r1"]
        lines.append(
            f"| {seed} | {acc['accuracy']:.3f} / {full['accuracy']:.3f} | {tests['correct']['b']} / "
            f"{tests['correct']['c']} | {_p(tests['correct']['p'])} | {acc['perception_correct']:.3f} / "
            f"{full['perception_correct']:.3f} | {tests['perception_correct']['b']} / {tests['perception_correct']['c']}"
            f" | {_p(tests['perception_correct']['p'])} |")
    lines += ["", "## Training reward (sampled, mean of the seeds): first tenth -> last tenth of the steps", "",
              "| arm | total | accuracy | visual |", "|---|---:|---:|---:|"]
    for arm in ARMS:
        runs = [results["training_reward"][f"{arm}-seed{s}"] for s in seeds]
        cells = [f"{_mean([r['first_tenth'][k] for r in runs]):.3f} -> {_mean([r['last_tenth'][k] for r in runs]):.3f}"
                 for k in ("total", "accuracy", "visual")]
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + " |")
    if figure:
        lines += ["", f"![held-out rates along the runs]({figure})"]
    lines += ["", "## Reading", "", *reading(results, seeds), "",
              f"Predictions fingerprint (sha256 over every predictions file): `{results['fingerprint']}`.", ""]
    return "\n".join(lines)


def reading(results: dict, seeds: list[int]) -> list[str]:
    """Plain sentences from the numbers (whatever they say)."""
    pooled, means = results["mcnemar"]["pooled"], arm_means(results, seeds)
    ahead = sum(results["held_out"][f"perception_r1-seed{s}"]["perception_correct"]
                > results["held_out"][f"accuracy_only-seed{s}"]["perception_correct"] for s in seeds)

    def change(arm: str, key: str) -> str:
        return f"{_fmt(means['warm_start'][key][0])} -> {_fmt(means[arm][key][0])}"

    return [
        f"- Accuracy-only GRPO: accuracy {change('accuracy_only', 'accuracy')} (pooled p "
        f"{_p(pooled['warm_start vs accuracy_only']['correct']['p'])}), perception-correct "
        f"{change('accuracy_only', 'perception_correct')} (p "
        f"{_p(pooled['warm_start vs accuracy_only']['perception_correct']['p'])}); of its right answers, "
        f"{_fmt(means['accuracy_only']['right_wrong_share'][0])} state wrong perception (warm start "
        f"{_fmt(means['warm_start']['right_wrong_share'][0])}).",
        f"- Perception-R1 reward: accuracy {change('perception_r1', 'accuracy')}, perception-correct "
        f"{change('perception_r1', 'perception_correct')}; against accuracy-only, perception-correct pooled p "
        f"{_p(pooled['accuracy_only vs perception_r1']['perception_correct']['p'])}, ahead in {ahead} of "
        f"{len(seeds)} seeds.",
        f"- Control (Perception-R1 reward, shuffled training pictures): held-out accuracy "
        f"{change('shuffled_images', 'accuracy')}, perception-correct {change('shuffled_images', 'perception_correct')}.",
    ]


FINGERPRINT_FIELDS = ("id", "response", "correct", "perception_correct")  # what the model did, not where files are


def fingerprint(out: Path, names: list[str]) -> str:
    """A hash of what the evaluations `names` decided (this invocation's, not others in `out`): the same seeds
    on the same machine give the same hash, whatever `--out` is."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode())
        for line in predictions(out, name).read_text().splitlines():
            row = json.loads(line)
            digest.update(json.dumps([row.get(k) for k in FINGERPRINT_FIELDS]).encode())
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "perception_demo", help="output folder")
    parser.add_argument("--steps", type=int, default=150, help="GRPO steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="one run per arm per seed")
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
    if not (out / "warm_start" / "config.json").is_file():
        # The fit would warm-start on first use too; done first so that its time is logged on its own.
        policy = yaml.safe_load(TASK.read_text())["model"]["policy"]["init_args"]
        cli(out / "logs" / "warm-start.log", "warm-start", str(out / "warm_start"), "--task", policy["task"],
            "--red-bias", str(policy["red_bias"]))
    results: dict = {"steps": args.steps, "seeds": args.seeds, "held_out": {}, "held_out_along": {},
                     "training_reward": {}}
    results["held_out"]["warm_start"] = rates(evaluate(out, "warm_start"))
    finals, evaluated = {}, ["warm_start"]
    for seed in args.seeds:
        for arm in ARMS:
            run, name = train(out, arm, seed, args.steps), f"{arm}-seed{seed}"
            results["training_reward"][name] = training_reward(run)
            along = {step: rates(evaluate(out, f"{name}-step{step}", path)) for step, path in checkpoints(run).items()}
            results["held_out_along"][name] = along
            results["held_out"][name] = along[max(along)]
            finals[name] = f"{name}-step{max(along)}"
            evaluated += [f"{name}-step{step}" for step in along]
    results["mcnemar"] = mcnemar_tables(out, finals, args.seeds)
    results["fingerprint"] = fingerprint(out, evaluated)
    figure = plot(out, results, args.seeds)
    results["wall_time_s"] = round(time.perf_counter() - start, 1)  # this invocation
    spent = json.loads((out / "logs" / "seconds.json").read_text())
    results["commands_s"] = {"fit": round(sum(v for k, v in spent.items() if k.startswith("fit-")), 1),
                             "test": round(sum(v for k, v in spent.items() if k.startswith("test-")), 1),
                             "warm_start": spent.get("warm-start", 0.0)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(report(results, args.seeds, args.steps, figure))
    print(f"\nreport: {out / 'report.md'}  (this invocation {results['wall_time_s'] / 60:.1f} min, its commands "
          f"{sum(results['commands_s'].values()) / 60:.1f} min; fingerprint {results['fingerprint']})")
    print("\n".join(reading(results, args.seeds)))


if __name__ == "__main__":
    main()
