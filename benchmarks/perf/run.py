"""Per-stage cost of one GRPO step: perception-rl's `GRPOModule` vs TRL's `GRPOTrainer` vs the raw-model floor.

Every side trains the same tiny random Qwen2.5-VL (`perception_rl.tiny`, identical weights) with the same
processor on the same 16 dev prompts (../shared/data/dev, images resized to a square), 2 prompts x G = 8
(16 completions) per step, exactly 64 new tokens per completion, AdamW, beta 0, one update per rollout batch,
the digit-share reward. Each run is a fresh subprocess (clean peak memory, no shared allocator state) with
`torch.set_num_threads(2)`; runs never overlap and alternate between the sides. Reported: medians over
steps 3-8 of all runs of a side (2 runs by default), per stage (see probe.py), tokens/s and peak RSS.

Commands, from the repository root (HF_HUB_OFFLINE=1: nothing is downloaded; the model is built in-process):

    .venv/bin/pip install -e '.[bench]'                        # TRL 1.16.0 (benchmark only)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/perf/run.py --out runs/perf   # 3 cases x 3 sides x 2 runs, ~12 min
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/perf/run.py --cases 10M --sides ours floor --runs 1 --out /tmp/perf
    .venv/bin/python benchmarks/perf/run.py --report runs/perf/results.json   # re-print (add --out DIR to rewrite)
    # the cost of perception_rl.RolloutLog (writing every step): ours with and without it
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/perf/run.py --cases 0.22M --sides ours ours_log --runs 4 --out /tmp/log

Cases: 0.22M (hidden 64, 2 layers, vision 32, 224x224 = 64 visual tokens), 10M (hidden 384, 6 layers, vision
192, 224x224) and 10M-long (the 10M model with 448x448 images = 256 visual tokens). Writes
`<out>/results.json` (settings, every step of every run, the aggregates) and `<out>/results.md` (the tables);
worker logs go to `<out>/logs/`. The last line printed is `our step time / TRL's on the 10 M model: X.XX`.

Before each run the harness waits (up to --quiet-wait seconds) until the machine is idle. A step during which
other processes used more than --max-foreign of the machine's CPU is left out of the medians; a run with
fewer than half of its timed steps clean is repeated (up to --retries times) and, if still disturbed, kept
whole and marked in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from probe import STAGES, machine_busy_s
from workload import CASES, DEFAULT_DATA_DIR, Settings

SIDES = ("ours", "trl", "floor", "ours_log")
SIDE_LABELS = {"ours": "perception-rl", "trl": "TRL", "floor": "floor", "ours_log": "perception-rl + RolloutLog"}
DEFAULT_SIDES = ("ours", "trl", "floor")  # ours_log: the cost of perception_rl.RolloutLog, run on request
STAGE_LABELS = {
    "rollout_prefill": "rollout: prefill", "rollout_decode": "rollout: decode", "rewards": "rewards",
    "logprob_passes": "old / reference log-prob passes",
    "update_forward": "update: forward", "loss_backward": "update: loss + backward",
    "clip_glue": "update: grad clip + glue", "optimizer": "update: AdamW step", "other": "other (framework)",
}


# ---------------------------------------------------------------------------------------------- worker
def worker(side: str, case_name: str, result_path: Path, settings: Settings, data_dir: Path) -> None:
    """Run one side on one case in this process and write its measurements to `result_path`."""
    import torch

    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    if side in ("ours", "ours_log"):
        import ours as implementation
    elif side == "trl":
        import trl_side as implementation
    else:
        import floor as implementation
    code = code_fingerprint()
    options = {"rollout_log": True} if side == "ours_log" else {}
    result = implementation.run(CASES[case_name], settings, data_dir, **options)
    result.update(side=side, case=case_name, torch_threads=torch.get_num_threads(),
                  run_wall_s=time.perf_counter() - started, perception_rl_code=code)
    if code_fingerprint() != code:
        result["code_changed_during_run"] = True
    result_path.write_text(json.dumps(result))


def code_fingerprint() -> str:
    """A hash of perception_rl/**/*.py as on disk: runs of the same code have the same one."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((HERE.parents[1] / "perception_rl").rglob("*.py")):
        digest.update(path.as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- orchestration
def wait_until_quiet(max_wait_s: float, busy_cores: float = 0.25) -> dict:
    """Sample machine-wide CPU use once a second until it is below `busy_cores` or `max_wait_s` passed."""
    start = time.perf_counter()
    while True:
        before = machine_busy_s()
        time.sleep(1.0)
        busy = machine_busy_s() - before
        waited = time.perf_counter() - start
        if busy < busy_cores or waited >= max_wait_s:
            return {"waited_s": round(waited, 1), "busy_cores_before": round(busy, 2)}


def launch(side: str, case: str, attempt_name: str, args, settings: Settings) -> dict:
    """One worker subprocess (never two at once); its result dict, or {"error": ...} with the log's tail."""
    out = Path(args.out)
    result_path = out / "raw" / f"{attempt_name}.json"
    log_path = out / "logs" / f"{attempt_name}.log"
    result_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.unlink(missing_ok=True)  # a failed run must not pick up an earlier one's result
    threads = str(settings.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, case, str(result_path),
               "--steps", str(settings.steps), "--threads", threads, "--data", str(args.data)]
    quiet = wait_until_quiet(args.quiet_wait)
    with log_path.open("w") as log:
        try:
            done = subprocess.run(
                command, check=False, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=args.run_timeout
            )
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if code != 0 or not result_path.is_file():
        tail = log_path.read_text()[-1500:]
        return {"side": side, "case": case, "error": f"exit {code}; log {log_path}", "log_tail": tail, **quiet}
    return {**json.loads(result_path.read_text()), **quiet}


def timed_steps(result: dict, first: int) -> list[dict]:
    """The steps from `first` (1-based) on."""
    return result.get("steps", [])[first - 1 :]


def used_steps(result: dict, first: int) -> list[dict]:
    """The timed steps the medians use: the undisturbed ones, or all of them when the run is marked disturbed."""
    steps = timed_steps(result, first)
    clean = [s for s in steps if not s.get("disturbed")]
    return steps if result.get("disturbed") or not clean else clean


def mark_disturbance(result: dict, first: int, cores: int, max_foreign: float) -> None:
    """Flag each step during which other processes used more than `max_foreign` of the machine's CPU, and
    the run when fewer than half of its timed steps are clean."""
    for step in result["steps"]:
        step["foreign_share"] = step["foreign_cpu_s"] / max(step["step_s"] * cores, 1e-9)
        step["disturbed"] = step["foreign_share"] > max_foreign
    timed = timed_steps(result, first)
    clean = sum(not s["disturbed"] for s in timed)
    result["disturbed"] = clean < (len(timed) + 1) // 2
    result["dropped_steps"] = len(timed) - clean if not result["disturbed"] else 0


def run_all(args, settings: Settings) -> dict:
    """Every (case, side) `args.runs` times, alternating sides; disturbed runs are repeated."""
    cores = os.cpu_count() or 1
    started_with = environment()
    runs: list[dict] = []
    for repeat in range(args.runs):
        for case in args.cases:
            sides = args.sides if repeat % 2 == 0 else list(reversed(args.sides))  # alternate the order too
            for side in sides:
                for attempt in range(args.retries + 1):
                    name = f"{case}-{side}-run{repeat + 1}-try{attempt + 1}"
                    print(f"[perf] {name} ...", flush=True)
                    result = launch(side, case, name, args, settings)
                    result.update(repeat=repeat + 1, attempt=attempt + 1)
                    runs.append(result)
                    if "error" in result:
                        print(f"[perf]   failed: {result['error']}\n{result['log_tail']}", flush=True)
                        break
                    mark_disturbance(result, args.first_timed_step, cores, args.max_foreign)
                    result["superseded"] = result["disturbed"] and attempt < args.retries  # repeated below
                    busy = [s for s in timed_steps(result, args.first_timed_step) if s["disturbed"]]
                    print(f"[perf]   median step {median_step(result, args.first_timed_step):.3f} s, "
                          f"peak RSS {result['peak_rss_mib']:.0f} MiB; other processes busy in {len(busy)} "
                          "timed step(s)" + (" -> run disturbed" if result["disturbed"] else ""), flush=True)
                    if not result["superseded"]:
                        break
    return {"settings": settings.to_dict(), "first_timed_step": args.first_timed_step, "environment": started_with,
            "git_at_end": git_state(), "runs": runs}


def environment() -> dict:
    """Versions and machine facts recorded with the figures."""
    from importlib import metadata

    versions = {}
    for package in ("torch", "transformers", "lightning", "trl", "accelerate", "datasets"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "versions": versions, "git": git_state()}


def git_state() -> dict:
    """The commit measured and the files that differed from it (perception-rl is measured as checked out)."""
    def git(*command: str) -> str:
        try:
            return subprocess.run(
                ["git", *command], check=False, cwd=HERE.parents[1], capture_output=True, text=True, timeout=30
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    status = git("status", "--porcelain", "--", "perception_rl").splitlines()
    changed = [line.split(maxsplit=1)[-1] for line in status if line.strip()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_in_perception_rl": changed}


# ---------------------------------------------------------------------------------------------- aggregation
def median_step(result: dict, first: int) -> float:
    return statistics.median(s["step_s"] for s in used_steps(result, first))


def aggregate(results: dict) -> dict:
    """Per (case, side): medians over the timed steps of its kept runs, peak RSS, spread and work shapes."""
    first, settings = results["first_timed_step"], results["settings"]
    tokens_per_step = settings["prompts_per_step"] * settings["group_size"] * settings["new_tokens"]
    kept = [r for r in results["runs"] if "error" not in r and not r.get("superseded")]
    table = {}
    for case in dict.fromkeys(r["case"] for r in results["runs"]):
        for side in SIDES:
            mine = [r for r in kept if r["case"] == case and r["side"] == side]
            if not mine:
                continue
            steps = [s for r in mine for s in used_steps(r, first)]
            step = statistics.median(s["step_s"] for s in steps)
            per_run = [median_step(r, first) for r in mine]
            table.setdefault(case, {})[side] = {
                "step_s": step,
                "stages_s": {k: statistics.median(s["stages_s"][k] for s in steps) for k in STAGES},
                "tokens_per_s": tokens_per_step / step,
                "peak_rss_mib": max(r["peak_rss_mib"] for r in mine),
                "rss_before_mib": max(r["rss_before_mib"] for r in mine),
                "per_run_median_step_s": per_run,
                "run_spread": (max(per_run) - min(per_run)) / step if len(per_run) > 1 else 0.0,
                "disturbed_runs": sum(bool(r.get("disturbed")) for r in mine),
                "dropped_steps": sum(r.get("dropped_steps", 0) for r in mine),
                "runs": len(mine),
                "steps_pooled": len(steps),
                "work": work_totals(mine[0]),
                "perception_rl_code": sorted({r.get("perception_rl_code", "?") for r in mine}),
                "framework_metrics": framework_medians(steps),
            }
    return table


def work_totals(result: dict) -> dict:
    """Tokens of all steps of one run, by pass: the same numbers on every side means the same work."""
    prefill = generated = trained = 0
    for step in result["steps"]:
        work = step["work"]
        if work.get("prefill_shape"):
            prefill += work["prefill_shape"][0] * work["prefill_shape"][1]
        prefill += sum(rows * length for rows, length in work.get("rollout_forward_shapes", []) if length > 1)
        if work.get("generated_shape"):
            generated += work["generated_shape"][0] * work["generated_shape"][1]
        trained += sum(rows * length for rows, length in work.get("update_forward_shapes", []))
    return {"prefill_tokens": prefill, "generated_tokens": generated, "update_forward_tokens": trained,
            "logprob_pass_forwards": sum(len(s["work"].get("logprob_pass_shapes", [])) for s in result["steps"])}


def framework_medians(steps: list[dict]) -> dict:
    """Medians of perception-rl's own `train/time/*` metrics (empty for the other sides)."""
    keys = sorted({k for s in steps for k in s.get("framework_metrics", {})})
    return {k: statistics.median(s["framework_metrics"][k] for s in steps if k in s["framework_metrics"]) for k in keys}


# ---------------------------------------------------------------------------------------------- report
def markdown(results: dict, table: dict) -> str:
    """The figures as markdown: a summary table, then one per-stage table per case, then the machine."""
    lines = ["| case | perception-rl | TRL | floor | ours / TRL | ours / floor | peak RSS ours / TRL / floor (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for case, sides in table.items():
        step = {side: sides[side]["step_s"] if side in sides else None for side in SIDES}
        rss = " / ".join(f"{sides[s]['peak_rss_mib']:.0f}" if s in sides else "-" for s in DEFAULT_SIDES)
        lines.append(f"| {case} | {_s(step['ours'])} | {_s(step['trl'])} | {_s(step['floor'])} | "
                     f"{_ratio(step['ours'], step['trl'])} | {_ratio(step['ours'], step['floor'])} | {rss} |")
    lines += rollout_log_cost(table, results["settings"])
    for case, sides in table.items():
        lines += ["", *case_table(case, sides, results["settings"]["steps"])]
    env = results["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    runs = ", ".join(f"{c}: {max(r['runs'] for r in s.values())}" for c, s in table.items())
    lines += ["", (f"Medians over steps {results['first_timed_step']}-{results['settings']['steps']} of every run "
                   f"(runs per side, {runs}); stage medians need not add up to the step's. Machine: {env['cpus']} CPUs "
                   f"({env['machine']}), Python {env['python']}, {versions}; torch threads "
                   f"{results['settings']['threads']}.")]
    git = env.get("git", {})
    dirty = git.get("uncommitted_in_perception_rl") or []
    end = results.get("git_at_end", {}).get("commit")
    lines.append(f"perception-rl at commit {git.get('commit', '?')}"
                 + (f" plus uncommitted changes to {', '.join(dirty)}" if dirty else "")
                 + (f" when the runs began, {end} when they ended" if end and end != git.get("commit") else "")
                 + ".")
    return "\n".join(lines)


def case_table(case: str, sides: dict, steps: int) -> list[str]:
    """One case: a row per stage, a column per side, then throughput, memory, spread and work per step."""
    shape = CASES[case]
    present = [side for side in SIDES if side in sides]
    title = (f"**{case}** (hidden {shape.hidden_size}, {shape.num_layers} layers, vision {shape.vision_hidden_size}; "
             f"{shape.image_side}x{shape.image_side} images, {shape.visual_tokens} visual tokens), seconds per step:")
    lines = [title, "",
             "| stage | " + " | ".join(SIDE_LABELS[s] for s in present) + " |",
             "|---|" + "---:|" * len(present)]

    def row(label: str, cell) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(sides[s], s) for s in present) + " |")

    for stage in STAGES:
        row(STAGE_LABELS[stage], lambda r, s, k=stage: f"{r['stages_s'][k]:.3f}")
    row("sync (weights to the engine)", lambda r, s: _sync(r))
    row("**step**", lambda r, s: f"**{r['step_s']:.3f}**")
    row("completion tokens / s", lambda r, s: f"{r['tokens_per_s']:.0f}")
    row("peak RSS MiB (growth in the steps)",
        lambda r, s: f"{r['peak_rss_mib']:.0f} (+{r['peak_rss_mib'] - r['rss_before_mib']:.0f})")
    row("median step of each run",
        lambda r, s: ", ".join(f"{v:.3f}" for v in r["per_run_median_step_s"]) + _notes(r, s))
    row("tokens per step: prefill / generated / update fwd",
        lambda r, s: " / ".join(str(round(r["work"][k] / steps)) for k in ("prefill_tokens", "generated_tokens",
                                                                          "update_forward_tokens")))
    return lines


def rollout_log_cost(table: dict, settings: dict) -> list[str]:
    """One line per case run with and without the rollout log: its cost as a share of our step time."""
    lines = []
    for case, sides in table.items():
        if "ours" in sides and "ours_log" in sides:
            plain, logged = sides["ours"]["step_s"], sides["ours_log"]["step_s"]
            shape = f"{settings['prompts_per_step']} groups x {settings['group_size']}"
            lines.append(f"RolloutLog on {case} (writing every step, {shape}): {logged:.3f} s vs {plain:.3f} s "
                         f"per step, {100 * (logged / plain - 1):+.1f} %")
    return ["", *lines] if lines else []


def _sync(row: dict) -> str:
    value = row["framework_metrics"].get("train/time/sync_s")
    return "none" if value is None else f"{value:.3f}"


def _notes(row: dict, side: str) -> str:
    notes = []
    if row["disturbed_runs"]:
        notes.append(f"{row['disturbed_runs']} run(s) disturbed")
    if row["dropped_steps"]:
        notes.append(f"{row['dropped_steps']} disturbed step(s) left out")
    if row["run_spread"] > 0.10:
        notes.append(f"noisy: {100 * row['run_spread']:.0f}% spread")
    if side == "ours" and len(row["perception_rl_code"]) > 1:
        notes.append("perception_rl changed between runs")
    return f" ({'; '.join(notes)})" if notes else ""


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}"


def final_line(table: dict) -> str:
    """`our step time / TRL's on the 10 M model: X.XX` (n/a when either side is missing)."""
    sides = table.get("10M", {})
    if "ours" in sides and "trl" in sides:
        return f"our step time / TRL's on the 10 M model: {sides['ours']['step_s'] / sides['trl']['step_s']:.2f}"
    return "our step time / TRL's on the 10 M model: n/a (run --cases 10M --sides ours trl)"


def report(results: dict, out: Path | None) -> None:
    """Aggregate, print the tables, write results.json / results.md, print the final ratio last."""
    table = aggregate(results)
    results["aggregate"] = table
    text = markdown(results, table)
    print(text)
    if out is not None:
        (out / "results.json").write_text(json.dumps(results, indent=1))
        (out / "results.md").write_text(text + "\n\n" + final_line(table) + "\n")
        print(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")
    print(final_line(table))


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None):
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for results.json, results.md, logs/ and raw/")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--sides", nargs="+", default=list(DEFAULT_SIDES), choices=list(SIDES),
                        help="ours_log: ours with perception_rl.RolloutLog writing every step (its cost)")
    parser.add_argument("--runs", type=int, default=2, help="runs per (case, side)")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="GRPO steps per run")
    parser.add_argument("--first-timed-step", type=int, default=3, help="steps before this one are warm-up")
    parser.add_argument("--threads", type=int, default=Settings.threads, help="torch threads in each run")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="the dev set folder (dev.jsonl, images/)")
    parser.add_argument("--quiet-wait", type=float, default=300.0, help="max seconds to wait for an idle machine")
    parser.add_argument("--max-foreign", type=float, default=0.05,
                        help="steps during which other processes used more than this share of the CPU are left out")
    parser.add_argument("--retries", type=int, default=2, help="repeats of a disturbed run")
    parser.add_argument("--run-timeout", type=float, default=1800.0, help="seconds before a run is killed")
    parser.add_argument("--report", type=Path,
                        help="re-print the tables of an earlier results.json (rewritten into --out if given) and exit")
    parser.add_argument("--worker", nargs=3, metavar=("SIDE", "CASE", "RESULT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = replace(Settings(), steps=args.steps, threads=args.threads)
    if args.worker:
        side, case, result = args.worker
        worker(side, case, Path(result), settings, args.data)
        return
    if args.report:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
        report(json.loads(args.report.read_text()), args.out)
        return
    if args.out is None:
        raise SystemExit("give --out DIR (or --report RESULTS.json)")
    if args.first_timed_step > args.steps:
        raise SystemExit(f"--first-timed-step {args.first_timed_step} is past --steps {args.steps}")
    if "trl" in args.sides:
        import importlib.util

        if importlib.util.find_spec("trl") is None:  # fail now, not after the other sides ran
            raise SystemExit("TRL is not installed: pip install -e '.[bench]' (or leave trl out of --sides)")
    args.out.mkdir(parents=True, exist_ok=True)
    report(run_all(args, settings), args.out)


if __name__ == "__main__":
    main()
