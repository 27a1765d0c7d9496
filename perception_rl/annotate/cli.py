"""`perception-rl annotate`: raw problems -> solutions -> correct ones -> visual annotations -> training records.

    perception-rl annotate run --config configs/annotate/geometry3k_vllm.yaml      # every stage, resumable
    perception-rl annotate solve|filter|extract|write --config C                   # one stage
    perception-rl annotate report --config C [--samples 20] [--seed 0]             # report.md, side by side
    perception-rl annotate agree --config C --judge_config configs/judges/openai_local.yaml [--limit N]
    perception-rl annotate convert --from geometry3k --input DIR --split train --output problems.jsonl
    perception-rl annotate convert --from authors --input their.parquet --output problems.jsonl

The config holds an `AnnotatePipeline` (input, output_dir, solve, extract, ...); any key can be overridden
on the command line (`--solve.samples 8`, `--extract.model.base_url http://...`). Rerun the same command
after a crash or with failed requests: finished requests are read back from output_dir/log/, never resent.
Exit status 1 when some requests are still unanswered (rerun to retry them).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jsonargparse import ArgumentParser

from perception_rl.annotate.pipeline import STAGES, AnnotatePipeline
from perception_rl.annotate.problems import convert
from perception_rl.annotate.quality import agreement, sample_report
from perception_rl.judge.base import Judge

COMMANDS = (*STAGES, "run", "report", "agree", "convert")
_PIPELINE_KEYS = ("input", "output_dir", "solve", "extract", "input_format", "split", "output_format",
                  "images_outside_data_dir")


def pipeline_parser(command: str) -> ArgumentParser:
    parser = ArgumentParser(prog=f"perception-rl annotate {command}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="config", help="an annotate config (YAML)")
    parser.add_class_arguments(AnnotatePipeline)
    if command == "report":
        parser.add_argument("--samples", type=int, default=20, help="annotated problems shown")
        parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    if command == "agree":
        parser.add_argument("--judge", type=Judge, required=True, help="the perception judge (class_path + init_args)")
        parser.add_argument("--judge_config", type=str | None, default=None,
                            help="a judge config, or a training config with a PerceptionReward (instead of --judge)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the pairing with other records")
        parser.add_argument("--limit", type=int | None, default=None, help="check at most this many records")
    return parser


def build_pipeline(parser: ArgumentParser, argv: list[str]) -> tuple[AnnotatePipeline, Any]:
    cfg = parser.parse_args(argv)
    init = parser.instantiate(cfg)
    return AnnotatePipeline(**{key: init[key] for key in _PIPELINE_KEYS}), init


def _judge_config_args(argv: list[str]) -> list[str]:
    """`--judge_config FILE` -> `--judge <spec>` (a judge config or a training config's perception judge)."""
    from perception_rl.judge.cli import judge_spec

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)  # `--judge` is not `--judge_config`
    pre.add_argument("--judge_config")
    known, rest = pre.parse_known_args(argv)
    return ["--judge", json.dumps(judge_spec(known.judge_config)), *rest] if known.judge_config else rest


def convert_main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="perception-rl annotate convert",
                            description="Convert a Geometry3K release or the authors' rows into perception-rl records.")
    parser.add_argument("--from", dest="source", type=str, required=True, help="geometry3k, authors or records")
    parser.add_argument("--input", type=str, required=True, help="release folder or data file")
    parser.add_argument("--output", type=str, required=True, help="records file to write (.jsonl or .parquet)")
    parser.add_argument("--split", type=str, default="train", help="Geometry3K split folder")
    parser.add_argument("--images_outside_data_dir", type=bool, default=False, help="allow images outside the input folder")
    cfg = parser.parse_args(argv)
    written, bad = convert(cfg.input, cfg.source, cfg.output, cfg.split, cfg.images_outside_data_dir)
    for item in bad:
        print(f"bad record {item} (skipped)", file=sys.stderr)
    print(f"wrote {written} records to {cfg.output} ({len(bad)} bad records skipped)")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    if command == "convert":
        return convert_main(rest)
    parser = pipeline_parser(command)
    pipeline, init = build_pipeline(parser, _judge_config_args(rest) if command == "agree" else rest)
    if command == "report":
        path = sample_report(pipeline.read_problems(), pipeline.work, init.samples, init.seed)
        print(f"wrote {path}")
    elif command == "agree":
        result = agreement(pipeline.work, init.judge, init.seed, init.limit)
        print(json.dumps(result, indent=2))
    else:
        summary = pipeline.run(STAGES if command == "run" else (command,))
        print(f"summary: {pipeline.work.summary}")
        if summary["pending_requests"]:
            print(f"{summary['pending_requests']} requests are still unanswered; rerun the same command to retry them",
                  file=sys.stderr)
            raise SystemExit(1)


if __name__ == "__main__":
    main()
