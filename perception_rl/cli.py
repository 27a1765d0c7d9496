"""The `perception-rl` command: LightningCLI's fit / validate / test, plus asset-making tools.

    perception-rl fit --config configs/demo.yaml
    perception-rl test --config <run>/logs/version_0/config.yaml --ckpt_path <run>/logs/version_0/checkpoints/last.ckpt
    perception-rl make-tiny-model DIR       # a tiny random Qwen2.5-VL, offline
    perception-rl make-demo-data DIR        # the synthetic dots task
    perception-rl warm-start DIR            # the demo's tiny Qwen2.5-VL after its supervised warm start
    perception-rl judge --config C --input PAIRS.jsonl   # audit a judge on (annotations, response) pairs
    perception-rl compare A.jsonl B.jsonl --key correct [--by FIELD]   # exact McNemar test of two evaluations
    perception-rl annotate run --config configs/annotate/geometry3k_vllm.yaml   # problems -> annotated records
    perception-rl view RUN_DIR [--serve]    # one HTML page of the run's rollouts, judge verdicts and test results
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from collections.abc import Callable

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger

from perception_rl import console
from perception_rl.console import USER_ERRORS, StepProgressBar, one_line, quiet_libraries
from perception_rl.data.datamodule import RecordDataModule
from perception_rl.module import GRPOModule

TOOLS_HELP = """other commands:
  make-tiny-model DIR   write a tiny random Qwen2.5-VL (model, tokenizer, processor) to DIR, offline
  make-demo-data DIR    write the synthetic dots task (train/val/test JSONL + images) to DIR
  warm-start DIR        build the demo's tiny Qwen2.5-VL and give it its supervised warm start (about a minute)
  judge --config C --input PAIRS.jsonl
                        score (annotations, response) pairs with a configured judge; per-item verdicts + summary
  compare A.jsonl B.jsonl [--key correct] [--by FIELD]
                        pair two evaluations' rows by id: 2x2 table, discordant b and c, exact McNemar p
  --debug               with fit / validate / test: keep the traceback of a bad setting or record
                        (otherwise one line names it; PERCEPTION_RL_DEBUG=1 does the same)
  view RUN_DIR [--serve] [--port N]
                        write RUN_DIR/view.html (reward curves, rollouts by step and group with the judge's
                        per-item verdicts, test results; self-contained) and print its path
  annotate {run,solve,filter,extract,write,report,agree,convert} --config C
                        the data pipeline: solve problems, keep correct solutions, extract visual
                        annotations, write training records; resumable (see `perception-rl annotate`)
"""


class PerceptionRLCLI(LightningCLI):
    """LightningCLI for `GRPOModule`; any LightningDataModule subclass may be given as `data.class_path`.

    Without a logger in the config, runs log to CSV under `trainer.default_root_dir`, so one override of
    that directory moves the whole run (logs, saved config, checkpoints, exported model).
    """

    def instantiate_trainer(self, **kwargs):
        trainer_config = self._get(self.config_init, "trainer", default={})
        if trainer_config.get("logger") in (None, True):
            root = Path(trainer_config.get("default_root_dir") or ".")
            # Evaluating a training run (its saved config) logs beside its eval/ results, not as a new
            # logs/version_N of the training run.
            evaluating = self.subcommand in ("test", "validate")
            kwargs["logger"] = CSVLogger(root / "eval" if evaluating else root, name="logs")
            if evaluating:  # the run's ModelCheckpoint now resolves another folder; nothing is saved anyway
                warnings.filterwarnings("ignore", message="The dirpath has changed")
        return super().instantiate_trainer(**kwargs)

    def _run_subcommand(self, subcommand: str) -> None:
        console.run_started = True  # from here on an error is the run's, not the command line's
        super()._run_subcommand(subcommand)

    def _instantiate_trainer(self, config: dict, callbacks: list):
        from lightning.pytorch.callbacks import ProgressBar
        from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

        configured = [*(config.get("callbacks") or []), *callbacks]
        wants_bar = config.get("enable_progress_bar") is not False
        if wants_bar and _RICH_AVAILABLE and not any(isinstance(c, ProgressBar) for c in configured):
            callbacks = [*callbacks, StepProgressBar()]  # "step 37/200" instead of "Epoch 1/-2"
        return super()._instantiate_trainer(config, callbacks)


def _tools() -> dict[str, Callable[[list[str]], None]]:
    from perception_rl.annotate.cli import main as annotate
    from perception_rl.data.synthetic import main as make_demo_data
    from perception_rl.eval.compare import main as compare
    from perception_rl.judge.cli import main as judge
    from perception_rl.tiny import main as make_tiny_model
    from perception_rl.viewer.cli import main as view
    from perception_rl.warm_start import main as warm_start

    return {"make-tiny-model": make_tiny_model, "make-demo-data": make_demo_data, "warm-start": warm_start,
            "judge": judge, "compare": compare, "annotate": annotate, "view": view}


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    # A bad setting or record ends with one line naming it; --debug (or PERCEPTION_RL_DEBUG=1) keeps the traceback.
    debug = "--debug" in argv or os.environ.get("PERCEPTION_RL_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if args is None:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv = [sys.argv[0], *argv]
    if debug:  # also for the processes a multi-device launcher starts from sys.argv
        os.environ["PERCEPTION_RL_DEBUG"] = "1"
    try:
        _run(argv, None if args is None else argv)
    except USER_ERRORS as err:
        if debug or not console.is_user_error(err):
            raise
        print(f"perception-rl: error: {one_line(err)}\n(run again with --debug for the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _run(argv: list[str], args: list[str] | None) -> None:
    quiet_libraries()  # also for the tools: warm-start would print transformers' "Writing model shards" bar
    tools = _tools()
    if argv and argv[0] in tools:
        tools[argv[0]](argv[1:])
        return
    # A checkpoint taken after a GRPO step holds the weights after that step's updates, together with the RNG,
    # data and reward state for the next step: that is what exact resume needs, so Lightning's advice to save
    # pre-optimisation weights by hand does not apply.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    PerceptionRLCLI(
        GRPOModule,
        RecordDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"epilog": TOOLS_HELP},
        args=args,
    )


if __name__ == "__main__":
    main()
