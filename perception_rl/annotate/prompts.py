"""Prompt templates of the solve and extract stages: versioned YAML files rendered into chat messages.

Shipped templates live in `perception_rl/annotate/prompts/` (select one by name: "solve-v1", "extract-v1");
any YAML file path works too, so a config can swap in its own wording. `hash` is a digest of the content
(not the comments); it is part of every request, so a changed template means new requests, never a mix
of old and new replies. The extraction reply format is a `<facts>` block with one "- fact" per line;
replies in the authors' `<info1>..</info1>` form parse too.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SOLVE_PROMPT = "solve-v1"
DEFAULT_EXTRACT_PROMPT = "extract-v1"
_PLACEHOLDER = re.compile(r"\{(problem|answer|solution|examples)\}")
_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_FACTS_BLOCK = re.compile(r"<facts>(.*?)(?:</facts>|$)", re.DOTALL | re.IGNORECASE)
_INFO_ITEM = re.compile(r"<info(\d+)>(.*?)</info\1>", re.DOTALL | re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d+\s*[.)]|\(\d+\))\s*")
_NONE = re.compile(r"^\(?(?:none|no (?:visual )?facts?|n/?a)\)?\.?$", re.IGNORECASE)


def _fill(text: str, values: dict[str, str]) -> str:
    """Replace known placeholders in one pass, so inserted text (a solution) is never scanned again."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _load_raw(name_or_path: str) -> tuple[dict[str, Any], str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"annotate prompt: template file not found: {path}")
        raw, source = yaml.safe_load(path.read_text(encoding="utf-8")), str(path)
    else:
        folder = resources.files("perception_rl.annotate") / "prompts"
        shipped = folder / f"{name_or_path}.yaml"
        if not shipped.is_file():
            names = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
            raise ValueError(f"annotate prompt: no shipped template {name_or_path!r} (shipped: {names}); or a .yaml path")
        raw, source = yaml.safe_load(shipped.read_text(encoding="utf-8")), f"shipped:{name_or_path}"
    if not isinstance(raw, dict) or not raw.get("user"):
        raise ValueError(f"annotate prompt {source}: a template is a YAML mapping with at least a 'user' turn")
    return raw, source


def _hash(raw: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SolveTemplate:
    """The solve request: an optional system turn, then the images and the user turn around `{problem}`."""

    name: str
    version: str
    system: str
    user: str
    hash: str
    source: str

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_SOLVE_PROMPT) -> SolveTemplate:
        raw, source = _load_raw(name_or_path)
        if "{problem}" not in raw["user"]:
            raise ValueError(f"annotate prompt {source}: the solve template's 'user' must contain {{problem}}")
        return cls(str(raw.get("name", "solve")), str(raw.get("version", "0")), raw.get("system") or "", raw["user"],
                   _hash(raw), source)

    @property
    def label(self) -> str:
        return f"{self.name}-v{self.version}@{self.hash}"

    def messages(self, problem: str, images: list[bytes]) -> list[dict]:
        """Images first (as data URLs), then the text, as the paper's prompts put them."""
        content: list[dict] = [{"type": "image_url", "image_url": {"url": data_url(image)}} for image in images]
        content.append({"type": "text", "text": _fill(self.user, {"problem": problem})})
        system = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return [*system, {"role": "user", "content": content}]


@dataclass(frozen=True)
class ExtractTemplate:
    """The extraction request (text only): instructions with worked examples, then the problem and one solution."""

    name: str
    version: str
    system: str
    user: str
    examples: tuple[dict[str, Any], ...]
    hash: str
    source: str

    @classmethod
    def load(cls, name_or_path: str = DEFAULT_EXTRACT_PROMPT) -> ExtractTemplate:
        raw, source = _load_raw(name_or_path)
        if "{solution}" not in raw["user"]:
            raise ValueError(f"annotate prompt {source}: the extract template's 'user' must contain {{solution}}")
        examples = tuple(raw.get("examples") or ())
        for k, example in enumerate(examples):
            if not isinstance(example, dict) or not {"problem", "solution", "facts"} <= set(example):
                raise ValueError(f"annotate prompt {source}: examples[{k}] needs problem, solution and facts")
        return cls(str(raw.get("name", "extract")), str(raw.get("version", "0")), raw.get("system") or "", raw["user"],
                   examples, _hash(raw), source)

    @property
    def label(self) -> str:
        return f"{self.name}-v{self.version}@{self.hash}"

    def system_text(self) -> str:
        blocks = [
            f"Example {k}\nProblem:\n{ex['problem'].strip()}\nSolution:\n{ex['solution'].strip()}\nReply:\n"
            + facts_reply(ex["facts"])
            for k, ex in enumerate(self.examples, start=1)
        ]
        return _fill(self.system, {"examples": "\n\n".join(blocks)}).strip()

    def messages(self, problem: str, solution: str, answer: str = "") -> list[dict]:
        user = _fill(self.user, {"problem": problem, "solution": solution, "answer": answer})
        system = self.system_text()
        return [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": user}]


def facts_reply(facts: list[str]) -> str:
    """The reply a perfect extractor gives for these facts."""
    return "<facts>\n" + "".join(f"- {fact}\n" for fact in facts) + "</facts>"


def parse_facts(reply: str) -> list[str] | None:
    """The fact lines of an extraction reply: the last <facts> block (a "<facts>" left open counts to the end),
    else <infoK> items; None when the reply holds neither (unparsable). Bullets and numbering are removed."""
    reply = _THINK_BLOCK.sub("", reply)
    blocks = _FACTS_BLOCK.findall(reply)
    if blocks:
        lines = [_BULLET.sub("", line).strip() for line in blocks[-1].splitlines()]
        return [line for line in lines if line and not _NONE.match(line)]
    tagged = _INFO_ITEM.findall(reply)
    if tagged:
        return [text.strip() for _, text in sorted(tagged, key=lambda item: int(item[0])) if text.strip()]
    return None


def data_url(image: bytes) -> str:
    """A data URL for PNG or JPEG bytes; other formats (GIF, WebP, BMP, ...) are converted to PNG first."""
    if image[:8] == b"\x89PNG\r\n\x1a\n":
        kind = "png"
    elif image[:3] == b"\xff\xd8\xff":
        kind = "jpeg"
    else:
        from PIL import Image

        from perception_rl.data.images import to_rgb

        buffer = io.BytesIO()
        with Image.open(io.BytesIO(image)) as opened:
            to_rgb(opened).save(buffer, format="PNG")
        image, kind = buffer.getvalue(), "png"
    return f"data:image/{kind};base64,{base64.b64encode(image).decode()}"
