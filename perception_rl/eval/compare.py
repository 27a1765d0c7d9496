"""`perception-rl compare`: the exact McNemar test between two evaluations of the same items (paper.md §6).

    perception-rl compare base/predictions.jsonl trained/predictions.jsonl --key correct --by problem_version

Rows are paired by id. For a binary outcome (`--key`, "correct" by default) the 2x2 table counts the
items both runs got right, only A, only B, and neither; b (A right, B wrong) and c (A wrong, B right)
are the discordant counts, and the p-value is the exact two-sided binomial form
p = min(1, 2 P(X <= min(b, c))), X ~ Bin(b + c, 1/2), which is what scipy's `binomtest` returns for
p = 1/2. Ids found in only one file are reported (counted, first few listed), never dropped silently;
`--strict` makes them an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from perception_rl.data.records import iter_raw_rows
from perception_rl.eval.metrics import group_labels, natural_key

_TRUE = {"true", "1", "yes", "1.0"}
_FALSE = {"false", "0", "no", "0.0"}


@dataclass(frozen=True)
class McNemarResult:
    """Paired binary outcomes of runs A and B: the 2x2 counts and the exact McNemar p-value."""

    both: int
    only_a: int
    only_b: int
    neither: int

    @property
    def b(self) -> int:
        """Discordant: A right, B wrong."""
        return self.only_a

    @property
    def c(self) -> int:
        """Discordant: A wrong, B right."""
        return self.only_b

    @property
    def n(self) -> int:
        return self.both + self.only_a + self.only_b + self.neither

    @property
    def p_value(self) -> float:
        return mcnemar_p_value(self.b, self.c)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n": self.n, "b": self.b, "c": self.c, "p_value": self.p_value}


def mcnemar_p_value(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: the binomial test of min(b, c) successes in b + c trials at 1/2."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0  # no discordant pair: no evidence either way
    from scipy.stats import binomtest

    return float(binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue)


def mcnemar(outcomes_a: list[bool], outcomes_b: list[bool]) -> McNemarResult:
    """The 2x2 table of two equally long lists of paired outcomes."""
    if len(outcomes_a) != len(outcomes_b):
        raise ValueError(f"paired outcomes differ in length: {len(outcomes_a)} and {len(outcomes_b)}")
    pairs = list(zip(outcomes_a, outcomes_b))
    return McNemarResult(
        both=sum(a and b for a, b in pairs), only_a=sum(a and not b for a, b in pairs),
        only_b=sum(b and not a for a, b in pairs), neither=sum(not a and not b for a, b in pairs),
    )


# ------------------------------------------------------------------------------------------------ files
def _outcome(value: Any, where: str, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{where}: field {key!r} must be a binary outcome (true/false or 0/1), got {value!r}")


def load_rows(path: Path, key: str, id_field: str = "id") -> dict[str, dict[str, Any]]:
    """id -> row of a JSONL (or .json / .parquet) file; every row must carry the id and a binary `key`."""
    if not path.is_file():
        raise FileNotFoundError(f"compare: file not found: {path}")
    rows: dict[str, dict[str, Any]] = {}
    for where, row in iter_raw_rows(path, None):  # JSONL (or .json / .parquet) rows, errors naming the line
        if not isinstance(row, dict) or id_field not in row:
            raise ValueError(f"{where}: a row must be an object with an {id_field!r} field")
        if key not in row:
            raise ValueError(f"{where}: row has no field {key!r} (choose another with --key)")
        item_id = str(row[id_field])
        if item_id in rows:
            raise ValueError(f"{where}: duplicate id {item_id!r}")
        rows[item_id] = {**row, key: _outcome(row[key], where, key)}
    return rows


def _group_value(row: dict[str, Any], field: str) -> Any:
    return row[field] if field in row else (row.get("metadata") or {}).get(field)


def compare_rows(
    rows_a: dict[str, dict], rows_b: dict[str, dict], key: str, by: str | None = None
) -> dict[str, Any]:
    """McNemar overall and per group of `by`, plus the ids found in one file only."""
    shared = [i for i in rows_a if i in rows_b]
    result: dict[str, Any] = {
        "key": key, "paired": len(shared),
        "only_in_a": [i for i in rows_a if i not in rows_b], "only_in_b": [i for i in rows_b if i not in rows_a],
        "overall": mcnemar([rows_a[i][key] for i in shared], [rows_b[i][key] for i in shared]),
    }
    if by:
        members: dict[str, list[str]] = {}
        for i in shared:
            value = _group_value(rows_a[i], by)
            value = value if value is not None else _group_value(rows_b[i], by)
            for label in group_labels(value):
                members.setdefault(label, []).append(i)
        result["by"] = by
        result["groups"] = {
            label: mcnemar([rows_a[i][key] for i in ids], [rows_b[i][key] for i in ids])
            for label, ids in sorted(members.items(), key=lambda kv: natural_key(kv[0]))
        }
    return result


# ------------------------------------------------------------------------------------------------ report
def format_report(result: dict[str, Any], name_a: str, name_b: str) -> str:
    overall: McNemarResult = result["overall"]
    lines = [
        f"A: {name_a}", f"B: {name_b}",
        (
            f"paired {result['paired']} items by id on {result['key']!r}; "
            f"ids only in A: {len(result['only_in_a'])}, only in B: {len(result['only_in_b'])}"
        ),
    ]
    for side in ("a", "b"):
        missing = result[f"only_in_{side}"]
        if missing:
            lines.append(f"  only in {side.upper()} (not compared): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    lines += [
        "", f"overall (n = {overall.n})",
        f"{'':>10}{'B true':>12}{'B false':>12}",
        f"{'A true':>10}{overall.both:>12}{f'b = {overall.b}':>12}",
        f"{'A false':>10}{f'c = {overall.c}':>12}{overall.neither:>12}",
        f"b = {overall.b} (A true, B false), c = {overall.c} (A false, B true)",
        f"exact McNemar p = {overall.p_value:.4g} (two-sided binomial, b + c = {overall.b + overall.c})",
    ]
    if result.get("groups"):
        by = result["by"]
        lines += ["", f"by {by}:", f"| {by} | n | both | b | c | neither | p |", "|---|---:|---:|---:|---:|---:|---:|"]
        for label, r in result["groups"].items():
            lines.append(f"| {label} | {r.n} | {r.both} | {r.b} | {r.c} | {r.neither} | {r.p_value:.4g} |")
    return "\n".join(lines)


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in result.items() if k not in ("overall", "groups")}
    out["overall"] = result["overall"].to_dict()
    if "groups" in result:
        out["groups"] = {label: r.to_dict() for label, r in result["groups"].items()}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="perception-rl compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="rows of run A (JSONL, e.g. <eval>/predictions.jsonl)")
    parser.add_argument("b", type=Path, help="rows of run B, same items")
    parser.add_argument("--key", default="correct", help="binary field to compare (default: correct)")
    parser.add_argument("--by", default=None, help="also test per value of this field (top level or metadata)")
    parser.add_argument("--id-field", default="id", help="field that pairs rows (default: id)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    parser.add_argument("--strict", action="store_true", help="fail when the two files hold different ids")
    args = parser.parse_args(argv)
    try:
        rows_a = load_rows(args.a, args.key, args.id_field)
        rows_b = load_rows(args.b, args.key, args.id_field)
    except (OSError, ValueError) as err:
        parser.exit(2, f"perception-rl compare: {err}\n")
    result = compare_rows(rows_a, rows_b, args.key, args.by)
    print(format_report(result, str(args.a), str(args.b)))
    if args.json is not None:
        args.json.write_text(json.dumps(_jsonable(result), indent=2) + "\n", encoding="utf-8")
    if args.strict and (result["only_in_a"] or result["only_in_b"]):
        print("perception-rl compare: the files hold different ids (--strict)", file=sys.stderr)
        sys.exit(1)
