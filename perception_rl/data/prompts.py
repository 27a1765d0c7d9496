"""The user turn: the problem, lettered options when given, and the format instruction (paper.md §4)."""

from __future__ import annotations

import string

from perception_rl.data.records import Record

DEFAULT_FORMAT_INSTRUCTION = (
    "Reason about the image step by step inside <think> </think> tags. Then write the answer inside "
    "<answer> </answer> tags, putting the final result in \\boxed{}."
)


def problem_text(record: Record) -> str:
    """Problem text with the options as lettered lines and any `<image>` placeholder removed."""
    text = record.problem.replace("<image>", "").strip()
    if record.choices:
        options = "\n".join(f"{string.ascii_uppercase[i]}. {c}" for i, c in enumerate(record.choices))
        text = f"{text}\nChoices:\n{options}"
    return text


def user_message(record: Record, format_instruction: str, num_images: int) -> dict:
    """A chat message with one image entry per image, then the problem and a space and the instruction."""
    text = problem_text(record)
    if format_instruction:
        # After lettered options the instruction starts its own line rather than trailing the last option.
        text = f"{text}{chr(10) if record.choices else ' '}{format_instruction}"
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}]
    return {"role": "user", "content": content}
