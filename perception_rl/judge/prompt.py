"""Judge prompt templates: versioned YAML files rendered into chat messages, and the reply parser.

A template holds the instruction (system turn), the user turn around the facts and the response, the
numbered verdict tag the judge must answer with, and worked examples. Templates ship in
`perception_rl/judge/prompts/` (select one by name, e.g. "perception-v1") or come from any file path.
`PromptTemplate.hash` is a digest of the template's content (not its comments), logged with every run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PROMPT = "perception-v1"
# Replies may use the authors' tag as well as the template's, so judges prompted for their format parse too.
FALLBACK_TAGS = ("info",)
_REQUIRED_KEYS = ("tag", "system", "user")
_PLACEHOLDER = re.compile(r"\{(tag|examples|num_items|facts|response|index|fact)\}")
# Reasoning judges think before answering; tags quoted while thinking are not the verdict.
_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)


def _fill(text: str, values: dict[str, str]) -> str:
    """Replace known placeholders in one pass: inserted text (a response) is never scanned again."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


@dataclass(frozen=True)
class PromptTemplate:
    """A loaded template. Build with `PromptTemplate.load(name_or_path)`."""

    name: str
    version: str
    tag: str
    system: str
    user: str
    fact_line: str
    examples: tuple[dict[str, Any], ...]
    delimiters: tuple[str, ...]
    hash: str
    source: str

    @classmethod
    def load(cls, name_or_path: str) -> PromptTemplate:
        """A shipped template by name ("perception-v1") or a YAML file by path."""
        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml") or path.is_file():
            if not path.is_file():
                raise FileNotFoundError(f"judge prompt: template file not found: {path}")
            return cls.from_dict(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
        folder = resources.files("perception_rl.judge") / "prompts"
        shipped = folder / f"{name_or_path}.yaml"
        if not shipped.is_file():
            names = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
            raise ValueError(f"judge prompt: no shipped template {name_or_path!r} (shipped: {names}); or a .yaml path")
        return cls.from_dict(yaml.safe_load(shipped.read_text(encoding="utf-8")), f"shipped:{name_or_path}")

    @classmethod
    def from_dict(cls, raw: Any, source: str = "<dict>") -> PromptTemplate:
        if not isinstance(raw, dict):
            raise ValueError(f"judge prompt {source}: a template must be a YAML mapping")
        missing = [k for k in _REQUIRED_KEYS if not raw.get(k)]
        if missing:
            raise ValueError(f"judge prompt {source}: missing key(s) {missing}")
        for placeholder in ("{facts}", "{response}"):
            if placeholder not in raw["user"]:
                raise ValueError(f"judge prompt {source}: 'user' must contain {placeholder}")
        if not re.fullmatch(r"[A-Za-z_]+", raw["tag"]):
            raise ValueError(f"judge prompt {source}: 'tag' must be letters or '_', got {raw['tag']!r}")
        examples = tuple(raw.get("examples") or ())
        for k, example in enumerate(examples):
            if len(example.get("facts", [])) != len(example.get("verdicts", [])) or "response" not in example:
                raise ValueError(f"judge prompt {source}: examples[{k}] needs facts, response and one verdict per fact")
        canonical = json.dumps(raw, sort_keys=True, ensure_ascii=False).encode()
        return cls(
            name=str(raw.get("name", "custom")), version=str(raw.get("version", "0")), tag=raw["tag"],
            system=raw["system"], user=raw["user"], fact_line=raw.get("fact_line", "[{index}] {fact}"),
            examples=examples, delimiters=tuple(raw.get("delimiters") or ()),
            hash=hashlib.sha256(canonical).hexdigest()[:16], source=source,
        )

    @property
    def label(self) -> str:
        """"name-vVERSION@hash", the string logs and audit files carry."""
        return f"{self.name}-v{self.version}@{self.hash}"

    # ------------------------------------------------------------------ rendering
    def facts_block(self, facts: tuple[str, ...] | list[str]) -> str:
        return "\n".join(_fill(self.fact_line, {"index": str(k), "fact": f}) for k, f in enumerate(facts, start=1))

    def reply_for(self, verdicts: list[float] | tuple[float, ...]) -> str:
        """The reply a perfect judge gives for these verdicts (used by examples and by the rule-based judge)."""
        return "\n".join(f"<{self.tag}{k}>{_number(v)}</{self.tag}{k}>" for k, v in enumerate(verdicts, start=1))

    def system_text(self) -> str:
        blocks = []
        for k, example in enumerate(self.examples, start=1):
            blocks.append(
                f"Example {k}\nKey facts:\n{self.facts_block(example['facts'])}\n"
                f"Response:\n{example['response'].strip()}\nReply:\n{self.reply_for(example['verdicts'])}"
            )
        return _fill(self.system, {"tag": self.tag, "examples": "\n\n".join(blocks)}).strip()

    def user_text(self, facts: tuple[str, ...], response: str) -> str:
        values = {"tag": self.tag, "num_items": str(len(facts)), "facts": self.facts_block(facts), "response": response}
        return _fill(self.user, values)

    def messages(self, facts: tuple[str, ...], response: str, images: tuple[bytes, ...] = ()) -> list[dict]:
        """OpenAI-style chat messages; images (PNG/JPEG bytes) go before the text as data URLs."""
        text = self.user_text(facts, response)
        if images:
            content: Any = [{"type": "image_url", "image_url": {"url": _data_url(b)}} for b in images]
            content.append({"type": "text", "text": text})
        else:
            content = text
        return [{"role": "system", "content": self.system_text()}, {"role": "user", "content": content}]

    # ------------------------------------------------------------------ parsing
    def parse(self, reply: str) -> tuple[float, ...] | None:
        """Per-fact values from the judge's reply, an unparsable value counting 0; None without any verdict tag."""
        items = self.parse_items(reply)
        return None if items is None else tuple(0.0 if v is None else v for v in items)

    def parse_items(self, reply: str) -> tuple[float | None, ...] | None:
        """Per-fact values from the judge's reply: a number in [0, 1], or None where the tag holds no number.

        For K = 1, 2, ... the value of the last <tagK>...</tagK> (a judge may restate itself), read as a
        number and clamped to [0, 1]. Parsing stops at the first missing K. None when the reply holds no
        verdict tag at all.
        """
        reply = _THINK_BLOCK.sub("", reply)
        for tag in (self.tag, *[t for t in FALLBACK_TAGS if t != self.tag]):
            found: dict[int, str] = {}
            pattern = rf"<\s*{tag}\s*(\d+)\s*>(.*?)<\s*/\s*{tag}\s*\1\s*>"
            for match in re.finditer(pattern, reply, re.IGNORECASE | re.DOTALL):
                found[int(match.group(1))] = match.group(2)
            if found:
                values: list[float | None] = []
                while len(values) + 1 in found:
                    values.append(_as_verdict(found[len(values) + 1]))
                return tuple(values)
        return None


def _as_verdict(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return min(1.0, max(0.0, value)) if value == value else None  # "nan" is no verdict either


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _data_url(image: bytes) -> str:
    kind = "jpeg" if image[:3] == b"\xff\xd8\xff" else "png"
    return f"data:image/{kind};base64,{base64.b64encode(image).decode()}"
