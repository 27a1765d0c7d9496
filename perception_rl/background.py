"""`BackgroundWriter`: slow writes (files, remote loggers) on one worker thread, off the training loop.

Jobs run in submission order. At most `max_pending` wait: `submit` blocks while the queue is full, so a
writer that falls behind slows training down instead of dropping work or growing without bound. `flush`
waits until everything submitted is done. A failing job is reported with a warning (the first failure
with its traceback) and never stops the jobs after it, nor training.
"""

from __future__ import annotations

import queue
import threading
import traceback
import warnings
from collections.abc import Callable


class BackgroundWriter:
    """One daemon worker thread fed by a bounded queue; started on the first `submit`.

    Args:
        name: the thread's name, also used in warnings.
        max_pending: jobs that may wait before `submit` blocks.
    """

    def __init__(self, name: str, max_pending: int = 2):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.name = name
        self.max_pending = max_pending
        self.failures = 0
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._queue = queue.Queue(self.max_pending)
            self._thread = threading.Thread(target=self._work, args=(self._queue,), name=self.name, daemon=True)
            self._thread.start()
        self._queue.put(job)

    def flush(self) -> None:
        """Wait until every submitted job has run."""
        if self._queue is not None and self._thread is not None and self._thread.is_alive():
            self._queue.join()

    def close(self) -> None:
        """Run what is queued, then stop the thread (a later `submit` starts a new one)."""
        if self._queue is not None and self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._queue = self._thread = None

    def _work(self, jobs: queue.Queue) -> None:
        while True:
            job = jobs.get()
            try:
                if job is None:
                    return
                job()
            except Exception as err:  # noqa: BLE001 - a failed write must not take training down
                self.failures += 1
                detail = f":\n{traceback.format_exc()}" if self.failures == 1 else f": {err!r}"
                warnings.warn(f"{self.name}: a background write failed ({self.failures} so far){detail}", stacklevel=1)
            finally:
                jobs.task_done()

    def __getstate__(self) -> dict:
        """Pickle the settings only (the thread and queue are rebuilt on the next `submit`)."""
        return {**self.__dict__, "_queue": None, "_thread": None}
