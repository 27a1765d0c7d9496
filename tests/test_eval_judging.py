"""The optional LLM stage of benchmark scoring, through the perception reward's `Judge` interface."""

from __future__ import annotations

from eval_layouts import EvenAnswerJudge

from perception_rl.data.records import Record
from perception_rl.eval.judging import ANSWER_PROMPT, AnswerJudge, reference_statement
from perception_rl.judge.base import JudgeReply, ThreadedJudge
from perception_rl.judge.prompt import PromptTemplate


class FailingJudge(ThreadedJudge):
    def reply_batch(self, requests, deadline):
        return [JudgeReply(failure="http_error", error="503") for _ in requests]


def record(id: str, answer: str, choices=None, precision=None) -> Record:
    return Record(id, "How many?", answer, [], choices=choices, metadata={"precision": precision} if precision else {})


def row(id: str, correct: bool, settled: bool) -> dict:
    return {"id": id, "response": f"response {id}", "correct": correct, "settled": settled, "judged_by": "rules"}


def test_answer_template_loads_and_renders():
    template = PromptTemplate.load(ANSWER_PROMPT)
    messages = template.messages(("Problem: 1 + 1? Reference answer: 2",), "It is two.")
    assert "Reference answer: 2" in messages[1]["content"] and "<verdict1>" in messages[0]["content"]
    assert template.parse("<verdict1>1</verdict1>") == (1.0,)


def test_only_unsettled_rows_go_to_the_judge_and_are_counted():
    judge = AnswerJudge(EvenAnswerJudge())
    assert judge.judge.prompt == ANSWER_PROMPT, "the perception prompt is replaced by the answer template"
    rows = [row("a", False, False), row("b", True, True), row("c", False, True), row("d", False, False)]
    counts = judge.settle(rows, [record("a", "4"), record("b", "3"), record("c", "8"), record("d", "5")])
    assert counts == {"judge_requests": 2, "judge_changed": 1}
    assert [(r["correct"], r["judged_by"]) for r in rows] == [(True, "llm"), (True, "rules"), (False, "rules"), (False, "llm")]
    assert rows[0]["judge_reply"] == "<verdict1>1</verdict1>"


def test_recheck_all_and_failures_keep_the_rules_verdict():
    rows = [row("a", True, True)]
    assert AnswerJudge(EvenAnswerJudge(), recheck="all").settle(rows, [record("a", "3")])["judge_changed"] == 1
    assert rows[0]["correct"] is False and rows[0]["judged_by"] == "llm"
    rows = [row("b", False, False)]
    counts = AnswerJudge(FailingJudge()).settle(rows, [record("b", "2")])
    assert counts["judge_failures"] == 1 and rows[0]["judged_by"] == "rules" and rows[0]["judge_failure"] == "http_error"


def test_reference_statement_names_the_option_text_and_precision():
    assert reference_statement(record("x", "C", ["30", "40", "60"])) == (
        "Problem: How many?\nOptions: A. 30 B. 40 C. 60\nReference answer: C (60)"
    )
    assert reference_statement(record("y", "1.5", precision=1)).endswith("Precision: 1 decimal places\nReference answer: 1.5")
