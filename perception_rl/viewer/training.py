"""The training side of the page: every step the rollout log wrote, as groups of G responses with their flags.

The filters' definitions live here, once (the page only shows what these flags say):

    right_answer_wrong_perception  (response) the accuracy reward is full (1), the judge replied, and not every
                                   annotation item was judged correct (problems with annotations only)
    judge_failed                   (response) the judge's request failed (no usable reply, any kind)
    truncated                      (response) the completion hit the token limit
    zero_advantage                 (group) every advantage of the group is 0: the step learns nothing from it
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from perception_rl.rollout_log import ROLLOUTS_DIR, read_step
from perception_rl.viewer.images import ImageStore

RESPONSE_FILTERS = {
    "right_answer_wrong_perception": "right answer, wrong perception",
    "judge_failed": "judge failed",
    "truncated": "truncated",
}
GROUP_FILTERS = {"zero_advantage": "zero-advantage group"}


def step_files(run_dir: Path) -> list[Path]:
    return sorted((run_dir / ROLLOUTS_DIR).glob("step_*.parquet"))


def load_steps(run_dir: Path, images: ImageStore) -> list[dict[str, Any]]:
    """Every logged step, oldest first: {step, rewards, groups: [{..., responses: [...], flags}]}."""
    steps = []
    for path in step_files(run_dir):
        rows, meta = read_step(path)
        rewards = meta.get("rewards") or [{"name": k.removeprefix("reward/"), "kind": "other", "weight": None}
                                          for k in (rows[0] if rows else {}) if k.startswith("reward/")]
        judged = meta.get("judged_by") or []
        groups: dict[int, dict[str, Any]] = {}
        for row in rows:
            group = groups.get(row["group"])
            if group is None:
                group = groups[row["group"]] = _group(row, run_dir / ROLLOUTS_DIR, images)
            group["responses"].append(_response(row, rewards, judged))
        for group in groups.values():
            group["flags"] = ["zero_advantage"] if all(r["advantage"] == 0 for r in group["responses"]) else []
        steps.append({"step": int(meta.get("step", rows[0]["step"] if rows else 0)), "rewards": rewards,
                      "judged_by": judged, "groups": [groups[k] for k in sorted(groups)]})
    return steps


def _group(row: dict[str, Any], folder: Path, images: ImageStore) -> dict[str, Any]:
    keys = [images.add_png_file(folder / path) for path in row.get("images") or []]
    return {"group": row["group"], "record_id": row["record_id"], "problem": row.get("problem"),
            "answer": row.get("answer"), "annotations": row.get("annotations") or [], "images": keys, "responses": []}


def _response(row: dict[str, Any], rewards: list[dict[str, Any]], judged: list[str]) -> dict[str, Any]:
    judges = {}
    for name in judged:
        prefix = f"judge/{name}"
        judges[name] = {key: row.get(f"{prefix}/{key}") for key in
                        ("items", "values", "failure", "error", "reply", "judged_response", "cached")}
    response = {
        "sample": row["sample"], "completion": row["completion"], "tokens": row.get("completion_tokens"),
        "truncated": bool(row.get("truncated")), "total": _number(row.get("total")),
        "advantage": _number(row.get("advantage")), "judges": judges,
        "rewards": {r["name"]: _number(row.get(f"reward/{r['name']}")) for r in rewards},
    }
    response["flags"] = response_flags(response, rewards, judged)
    return response


def response_flags(response: dict[str, Any], rewards: list[dict[str, Any]], judged: list[str]) -> list[str]:
    """The response filters (see the module docstring) this response passes."""
    flags = []
    accuracy = [r["name"] for r in rewards if r.get("kind") == "accuracy"]
    perception = [response["judges"][name] for name in judged]
    right = bool(accuracy) and (response["rewards"].get(accuracy[0]) or 0) >= 1.0
    judged = perception[0] if perception and not perception[0]["failure"] else None
    if right and judged and judged["items"] and any(v != "correct" for v in judged["items"]):
        flags.append("right_answer_wrong_perception")
    if any(judge["failure"] for judge in perception):
        flags.append("judge_failed")
    if response["truncated"]:
        flags.append("truncated")
    return flags


def _number(value) -> float | None:
    """JSON has no NaN: an abstained score becomes None (shown as "abstained")."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
