"""Writers of small benchmark releases in their official layouts (file names, field names, image folders).

The layouts follow the public releases: MathVista's data/testmini.json (an object keyed by pid) and the
Hugging Face parquet with `decoded_image`; MathVerse's testmini.json with images/images_version_*/;
MATH-V's data/<split>.jsonl with images/<id>.jpg; WeMath's testmini.json with <n>steps/image/; InterGPS's
Geometry3K problem folders. Tests write them into tmp_path; nothing here is copied from a release.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image

from perception_rl.judge.base import JudgeReply, ThreadedJudge


def png(colour: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (56, 56)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def put_image(path: Path, data: bytes | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data or png())


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def mathvista_item(pid: str, question: str, answer: str, choices: list[str] | None = None, precision: float | None = None,
                   answer_type: str = "text", task: str = "geometry problem solving", skills: list[str] | None = None) -> dict:
    return {
        "question": question, "image": f"images/{pid}.jpg", "choices": choices, "unit": None, "precision": precision,
        "answer": answer, "question_type": "multi_choice" if choices else "free_form", "answer_type": answer_type,
        "pid": pid, "metadata": {
            "split": "testmini", "language": "english", "img_width": 56, "img_height": 56, "source": "fixture",
            "category": "math-targeted-vqa", "task": task, "context": "geometry diagram", "grade": "high school",
            "skills": skills or ["geometry reasoning"],
        },
    }


def write_mathvista(root: Path, items: list[dict], image_bytes: dict[str, bytes] | None = None) -> Path:
    """GitHub layout: <root>/data/testmini.json keyed by pid, images at <root>/data/images/<pid>.jpg."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "testmini.json").write_text(json.dumps({item["pid"]: item for item in items}, indent=2), encoding="utf-8")
    for item in items:
        put_image(data / item["image"], (image_bytes or {}).get(item["pid"]))
    return root


def write_mathvista_parquet(root: Path, items: list[dict]) -> Path:
    """Hugging Face layout: <root>/data/testmini-00000-of-00001.parquet, images embedded in decoded_image."""
    rows = [{**item, "decoded_image": {"bytes": png(), "path": item["image"]}, "query": item["question"]} for item in items]
    write_parquet(root / "data" / "testmini-00000-of-00001.parquet", rows)
    return root


def mathverse_item(sample: str, problem: str, version: str, question: str, answer: str, image: str,
                   question_type: str = "multi-choice", subject: str = "Plane Geometry") -> dict:
    return {
        "sample_index": sample, "problem_index": problem, "problem_version": version, "question": question,
        "image": image, "answer": answer, "question_type": question_type,
        "metadata": {"split": "testmini", "source": "fixture", "subject": subject, "subfield": "Angle"},
        "query_wo": f"Please directly answer the question.\nQuestion: {question}",
        "query_cot": f"Please first conduct reasoning.\nQuestion: {question}",
    }


def write_mathverse(root: Path, items: list[dict], name: str = "testmini.json") -> Path:
    """<root>/testmini.json (a list) and <root>/images/images_version_*/image_<n>.png."""
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(items, indent=2), encoding="utf-8")
    for item in items:
        if item["image"]:
            put_image(root / "images" / item["image"])
    return root


def mathvision_item(id: str, question: str, answer: str, options: list[str] | None = None, level: int = 2,
                    subject: str = "metric geometry - angle") -> dict:
    return {"id": id, "question": question, "options": options or [], "answer": answer, "solution": None,
            "level": level, "subject": subject, "image": f"images/{id}.jpg"}


def write_mathvision(root: Path, items: list[dict], split: str = "test") -> Path:
    """GitHub layout: <root>/data/<split>.jsonl and <root>/images/<id>.jpg."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / f"{split}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
    for item in items:
        put_image(root / item["image"])
    return root


def wemath_item(number: int, id: str, key: str, question: str, option: str, answer: str, image: str,
                concept: str = "Circumference of Circles") -> dict:
    return {
        "ID": id, "split": "testmini", "knowledge concept": concept, "question": question, "option": option,
        "answer": answer, "image_path": image, "key": key, "question number": number,
        "knowledge concept description": f"{concept}:\n1. a description.",
    }


def write_wemath(root: Path, items: list[dict]) -> Path:
    """<root>/testmini.json and images at <root>/<image_path> (2steps/image/1-1.png, ...)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "testmini.json").write_text(json.dumps(items, indent=2), encoding="utf-8")
    for item in items:
        put_image(root / item["image_path"])
    return root


def write_geometry3k_problem(root: Path, split: str, id: int, problem_text: str, choices: list[str], answer: str,
                             diagram_logic_form: list[str] | None = None, image: bytes | None = None) -> Path:
    """InterGPS layout: <root>/<split>/<id>/data.json, img_diagram.png, logic_form.json."""
    folder = root / split / str(id)
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "problem_text": problem_text, "choices": choices, "answer": answer, "detailed_solution": " ",
        "problem_type_graph": ["Triangle"], "problem_type_goal": ["Angle"], "source": "fixture", "id": id,
        "compact_choices": choices, "annotat_text": problem_text, "unit": "", "data_type": split,
    }
    (folder / "data.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    (folder / "logic_form.json").write_text(json.dumps({"text_logic_form": [], "diagram_logic_form": diagram_logic_form or []}))
    put_image(folder / "img_diagram.png", image)
    return root


# ------------------------------------------------------------------------------------------------ from the dev set
def mathvista_from_dev(dev: Path, root: Path, limit: int | None = None) -> tuple[Path, list[dict]]:
    """The shared dev items (Geometry3K + DynaMath) rewritten as a MathVista testmini release."""
    rows = [json.loads(line) for line in (dev / "dev.jsonl").read_text().splitlines() if line.strip()][:limit]
    items = []
    for row in rows:
        choices = row["choices"]
        answer = choices[ord(row["answer"]) - ord("A")] if choices and row["answer_type"] == "choice" else row["answer"]
        precision = None
        if row["answer_type"] == "number" and "." in row["answer"]:
            precision = float(len(row["answer"].split(".")[1]))
        item = mathvista_item(row["id"], row["question"], answer, choices, precision,
                              "float" if precision else ("integer" if row["answer_type"] == "number" else "text"),
                              task=row["source"], skills=[row["metadata"].get("subject", "geometry")])
        items.append(item)
        target = root / "data" / item["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dev / row["image"], target)
    (root / "data" / "testmini.json").write_text(json.dumps({i["pid"]: i for i in items}, indent=2), encoding="utf-8")
    return root, items


# ------------------------------------------------------------------------------------------------ a fake judge
class EvenAnswerJudge(ThreadedJudge):
    """Says "correct" exactly when the reference answer is an even integer: varied, known verdicts, no model."""

    def reply_batch(self, requests, deadline):
        replies = []
        for request in requests:
            gold = request.annotations[0].rsplit("Reference answer: ", 1)[-1].strip()
            verdict = int(gold.isdigit() and int(gold) % 2 == 0)
            replies.append(JudgeReply(text=f"<verdict1>{verdict}</verdict1>"))
        return replies
