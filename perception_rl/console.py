"""What a `perception-rl` run prints: a step counter, no library noise, and one clear line for a bad setting.

Only the command line uses these (`perception_rl.cli`); importing the package changes nothing.
"""

from __future__ import annotations

import logging
import re
import warnings

from lightning.pytorch.callbacks import RichProgressBar

# A bad setting or record: messages written for the user (file, line, field or setting named). They are shown
# as one line when raised while the command is set up (parsing, building the objects of the config), or, for
# a bad record, whenever one is read; anything raised once the run is under way keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotImplementedError)
run_started = False  # set by the CLI when the subcommand (fit, test, ...) begins


def is_user_error(err: BaseException) -> bool:
    from perception_rl.data.records import RecordError

    return isinstance(err, RecordError) or (isinstance(err, USER_ERRORS) and not run_started)


def quiet_libraries() -> None:
    """Silence what a normal run does not need to see: Lightning's logger advertisement, a deprecation
    warning from Lightning's own code, transformers' per-file progress bars."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message="Total length of .* across ranks is zero")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoTips())
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    except ImportError:  # transformers is a dependency; be safe anyway
        pass


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


def one_line(err: BaseException) -> str:
    """The user's part of an error as one line: for a config that failed jsonargparse's validation of a
    union (every `data` / `model` class), the constructor's own message instead of the union report."""
    text = str(err)
    reasons = [r for r in re.findall(r"^\s*- (.+)$", text, re.MULTILINE) if not r.startswith("Expected a <class")]
    if "Does not validate against any of the Union subtypes" in text and reasons:
        text = reasons[0]
    return " ".join(text.split())


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, reading "step 37/200" when `max_steps` bounds the run (not "Epoch
    1/-2"), without the logger's version number among the metrics."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return f"step {trainer.global_step}/{trainer.max_steps}"
        return super()._get_train_description(current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(trainer.current_epoch))

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
