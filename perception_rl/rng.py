"""Capture and restore every random number generator a GRPO step draws from, for exact resume.

Sampling (`generate`), mini-batch shuffling and anything user code does with `random` or numpy all
draw from global generators. A checkpoint stores their states as plain data (loadable with
`weights_only=True`); the module restores them right before the first step after a resume, after
Lightning's own set-up, so the next step draws exactly what it would have drawn without the interruption.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rng_state() -> dict:
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value
