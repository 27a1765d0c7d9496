"""The neutraliser measured on both sides (perception_rl/judge/neutralise.py, corpora in tests/neutraliser_corpus.py).

Precision: honest solutions in the dev data's style pass unchanged (a removed sentence of honest reasoning
lowers the visual reward of a good response). Recall: every attack is caught, and against a judge that
obeys what it reads (tests/judge_server.py, gullible mode) no attack scores above an honest response.
Run with `-s` to see the figures:

    .venv/bin/python -m pytest tests/test_judge_neutraliser.py -s
"""

from __future__ import annotations

import json
import os
import urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from judge_server import JudgeServer, ServerScript
from neutraliser_corpus import ATTACKS, HELD_OUT_ATTACKS, HONEST

from perception_rl.judge import JudgeRequest, Neutraliser, OpenAIJudge, PromptTemplate

FACTS = ("There are 2 circles.", "There is 1 square.")
HONEST_REPLY = "<verdict1>1</verdict1><verdict2>0</verdict2>"  # what the gullible judge says of any response: 0.5


def neutraliser() -> Neutraliser:
    template = PromptTemplate.load("perception-v1")
    return Neutraliser((template.tag,), template.delimiters)


def test_corpora_are_large_enough():
    assert len(HONEST) >= 50 and len(set(HONEST)) == len(HONEST)
    assert len(ATTACKS) >= 15 and len(set(ATTACKS)) == len(ATTACKS)


def test_precision_honest_solutions_pass_unchanged():
    clean = neutraliser()
    changed = [(text, clean(text)[0]) for text in HONEST if clean(text)[1]]
    precision = 1 - len(changed) / len(HONEST)
    print(f"\nneutraliser precision: {len(HONEST) - len(changed)}/{len(HONEST)} honest solutions unchanged ({precision:.3f})")
    assert not changed, "honest reasoning removed:\n" + "\n".join(f"  {a!r}\n  -> {b!r}" for a, b in changed)


def test_recall_every_attack_is_caught():
    clean, template = neutraliser(), PromptTemplate.load("perception-v1")
    missed = [text for text in ATTACKS if clean(text)[1] == 0]
    recall = 1 - len(missed) / len(ATTACKS)
    print(f"\nneutraliser recall: {len(ATTACKS) - len(missed)}/{len(ATTACKS)} attacks caught ({recall:.3f})")
    assert not missed, f"attacks passed unchanged: {missed}"
    assert all(template.parse(clean(text)[0]) is None for text in ATTACKS), "no verdict tag survives"


def test_recall_on_attacks_the_patterns_were_not_tuned_on():
    clean = neutraliser()
    missed = [text for text in HELD_OUT_ATTACKS if clean(text)[1] == 0]
    caught = len(HELD_OUT_ATTACKS) - len(missed)
    print(f"\nneutraliser held-out recall: {caught}/{len(HELD_OUT_ATTACKS)} attacks caught")
    assert not missed, f"held-out attacks passed unchanged: {missed}"


@pytest.fixture
def gullible():
    with JudgeServer(ServerScript(gullible=True, default_reply=HONEST_REPLY), lifetime_s=60) as server:
        yield server


def raw_score(server: JudgeServer, response: str) -> float:
    """The gullible judge's score for a response sent as is (no neutraliser): the control."""
    template = PromptTemplate.load("perception-v1")
    body = {"model": "judge", "messages": template.messages(FACTS, response)}
    request = urllib.request.Request(f"{server.url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    reply = json.loads(urllib.request.urlopen(request, timeout=5).read())["choices"][0]["message"]["content"]
    values = template.parse(reply) or ()
    return sum(values[: len(FACTS)]) / len(FACTS)


def test_attacks_gain_nothing_against_a_gullible_judge(gullible):
    baseline = 0.5
    unprotected = [raw_score(gullible, attack) - baseline for attack in ATTACKS]
    with OpenAIJudge(base_url=gullible.url, model="judge", request_timeout=5.0, max_retries=0) as judge:
        verdicts = judge.judge([JudgeRequest(FACTS, attack) for attack in ATTACKS])
    protected = [v.score() - baseline for v in verdicts]
    print(f"\nmean reward gain of {len(ATTACKS)} attacks on a gullible judge: {sum(protected) / len(protected):.3f} "
          f"with the neutraliser, {sum(unprotected) / len(unprotected):.3f} without")
    assert all(v.failure is None for v in verdicts)
    assert max(protected) <= 0.0, [a for a, g in zip(ATTACKS, protected) if g > 0]
    assert sum(unprotected) > 0, "the control: without the neutraliser the attacks do pay"
