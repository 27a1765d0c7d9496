"""The synthetic dots task and the demo's warm start: determinism, splits, gold facts that match the pictures."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from perception_rl.data import DotsDataModule, load_records, write_dots_dataset
from perception_rl.data.synthetic import CELL, GRID, cell_colours, fact, picture_key, solution, split_items
from perception_rl.judge.rules import fact_stated
from perception_rl.rewards.answers import grade
from perception_rl.rewards.format import follows_format
from perception_rl.warm_start import task_corpus, teacher_solution


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_is_deterministic_per_seed(tmp_path):
    a = _tree_bytes(write_dots_dataset(tmp_path / "a", num_train=4, num_val=2, num_test=2, seed=3))
    b = _tree_bytes(write_dots_dataset(tmp_path / "b", num_train=4, num_val=2, num_test=2, seed=3))
    c = _tree_bytes(write_dots_dataset(tmp_path / "c", num_train=4, num_val=2, num_test=2, seed=4))
    assert set(a) == {"train.jsonl", "val.jsonl", "test.jsonl"} | {f"images/train_{i:05d}.png" for i in range(4)} | {
        f"images/{s}_{i:05d}.png" for s in ("val", "test") for i in range(2)}
    assert a == b
    assert set(c) == set(a)
    assert a["train.jsonl"] != c["train.jsonl"]
    assert any(a[k] != c[k] for k in a if k.endswith(".png"))


def test_splits_are_separate_streams_whose_prefixes_do_not_depend_on_the_sizes(tmp_path):
    small = write_dots_dataset(tmp_path / "small", num_train=9, num_val=2, num_test=5, seed=0)
    large = write_dots_dataset(tmp_path / "large", num_train=9, num_val=3, num_test=8, seed=0)
    assert (large / "test.jsonl").read_text().splitlines()[:5] == (small / "test.jsonl").read_text().splitlines()
    ids = {split: {r.id for r in load_records(small / f"{split}.jsonl")} for split in ("train", "val", "test")}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    warmup = {json.dumps(r["metadata"]["dots"]) for r, _ in split_items("warmup", 50)}
    test = [json.dumps(r["metadata"]["dots"]) for r, _ in split_items("test", 50)]
    assert sum(t in warmup for t in test) <= 2, "warm-up and held-out pictures are drawn independently"
    with pytest.raises(ValueError, match="split"):
        split_items("holdout", 1)


def test_annotations_and_answers_match_what_the_picture_shows(tmp_path):
    root = write_dots_dataset(tmp_path, num_train=60, num_val=1, num_test=1, seed=0)
    kinds, with_orange = Counter(), 0
    for record in load_records(root / "train.jsonl"):
        meta = record.metadata
        image = Image.open(record.images[0])
        assert image.size == (GRID * CELL, GRID * CELL)
        seen = Counter(cell_colours(image).values())  # read back from the pixels, not from the metadata
        assert seen == Counter({c: n for c, n in meta["counts"].items() if n}), record.id
        red, blue = seen["red"], seen["blue"]
        assert 1 <= red <= 3 and 1 <= blue <= 3
        assert record.annotations == [fact("red", red), fact("blue", blue)]
        expected = red + blue if meta["task"] == "total" else abs(red - blue)
        assert int(record.answer) == expected
        assert not any(ch.isdigit() for ch in record.problem), "the question never gives a count away"
        kinds[meta["task"]] += 1
        with_orange += seen["orange"] > 0
    assert set(kinds) == {"total", "difference"}
    assert with_orange >= 40, "most pictures hold the orange distractor"


def test_gold_solution_earns_every_reward_and_a_miscount_does_not():
    for record, _ in split_items("train", 30):
        counts, kind = record["metadata"]["counts"], record["metadata"]["task"]
        gold = solution(kind, counts["red"], counts["blue"])
        assert follows_format(gold) and grade(gold, record["answer"]).correct
        assert all(fact_stated(f, gold) for f in record["annotations"])
        miscount = solution(kind, counts["red"] + 1, counts["blue"])
        assert not fact_stated(record["annotations"][0], miscount) and fact_stated(record["annotations"][1], miscount)
        assert not grade(miscount, record["answer"]).correct


def test_the_teacher_takes_orange_dots_for_red_at_the_confusion_rate():
    items = [r for r, _ in split_items("warmup", 300)]
    exact = [teacher_solution(r, random.Random(0), 0.0) for r in items]
    assert all(grade(s, r["answer"]).correct for s, r in zip(exact, items))
    blind = [teacher_solution(r, random.Random(0), 1.0) for r in items]
    for text, r in zip(blind, items):
        counts = r["metadata"]["counts"]
        assert fact("red", counts["red"] + counts["orange"]) in text and fact("blue", counts["blue"]) in text
    rng = random.Random(0)
    orange = [r for r in items if r["metadata"]["counts"]["orange"] == 1]
    wrong = sum(fact("red", r["metadata"]["counts"]["red"]) not in teacher_solution(r, rng, 0.75) for r in orange)
    assert 0.6 < wrong / len(orange) < 0.9


def test_every_teacher_solution_and_question_is_in_the_tokenizer_corpus():
    corpus = set(task_corpus())
    for record, _ in split_items("warmup", 100):  # confusion 1: the most red dots the teacher ever states
        assert teacher_solution(record, random.Random(1), 1.0) in corpus and record["problem"] in corpus


def test_datamodule_prepares_once_and_loads(tmp_path):
    dm = DotsDataModule(data_dir=str(tmp_path / "dots"), num_train=3, num_val=1, num_test=2, batch_size=3)
    dm.prepare_data()
    stamp = (tmp_path / "dots" / "generated.json").stat().st_mtime_ns
    dm.prepare_data()
    assert (tmp_path / "dots" / "generated.json").stat().st_mtime_ns == stamp, "same sizes and seed: not rewritten"
    dm.setup("fit")
    (batch,) = list(dm.train_dataloader())
    assert len(batch) == 3 and all(s.images[0].size == (GRID * CELL, GRID * CELL) for s in batch)


def test_warm_start_command_writes_a_loadable_model_and_leaves_the_global_rng_alone(tmp_path, capsys):
    from perception_rl.policy import Policy
    from perception_rl.warm_start import main

    state = torch.get_rng_state()
    main([str(tmp_path / "warm"), "--steps", "3", "--batch-size", "4"])
    assert torch.equal(torch.get_rng_state(), state), "a first-use warm start must not shift the run's sampling"
    assert "wrote the warm-started" in capsys.readouterr().out
    log = json.loads((tmp_path / "warm" / "warm_start.json").read_text())
    assert log["settings"]["confusion"] == 0.75 and len(log["loss"]) == 3
    policy = Policy(str(tmp_path / "warm"), max_pixels=12544)
    model, processor = policy.load_model(), policy.load_processor()
    assert model.config.tie_word_embeddings and len(processor.tokenizer) < 512


def test_warm_start_never_replaces_a_foreign_folder_and_refuses_a_cached_one_with_other_settings(tmp_path, capsys):
    from perception_rl.warm_start import WarmStartPolicy, main, write_warm_started_model

    foreign = tmp_path / "models"
    (foreign / "qwen").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not empty"):
        write_warm_started_model(foreign, steps=1, batch_size=2)
    assert (foreign / "qwen").is_dir(), "left untouched"

    write_warm_started_model(tmp_path / "warm", steps=2, batch_size=2)
    WarmStartPolicy(str(tmp_path / "warm"), steps=2, batch_size=2).prepare()  # the same settings: reused
    with pytest.raises(ValueError, match=r"other settings.*confusion"):
        WarmStartPolicy(str(tmp_path / "warm"), steps=2, batch_size=2, confusion=0.0).prepare()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad"), "--confusion", "1.5"])
    assert "confusion must be in [0, 1], got 1.5" in capsys.readouterr().err
    with pytest.raises(ValueError, match="steps must be >= 1"):
        WarmStartPolicy(str(tmp_path / "bad"), steps=0)


def test_negative_sizes_are_refused_with_the_field_named(tmp_path):
    with pytest.raises(ValueError, match="num_test must be >= 0, got -1"):
        write_dots_dataset(tmp_path, num_train=2, num_val=1, num_test=-1)
    with pytest.raises(ValueError, match="num_train, num_val and num_test must be >= 0"):
        DotsDataModule(data_dir=str(tmp_path), num_val=-2)


@pytest.mark.parametrize("task", ["count", "compare"])
def test_held_out_pictures_are_never_training_pictures(tmp_path, task):
    root = write_dots_dataset(tmp_path, num_train=1024, num_val=32, num_test=200, seed=0, task=task)
    rows = {split: [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]
            for split in ("train", "val", "test")}
    keys = {split: [picture_key(r) for r in split_rows] for split, split_rows in rows.items()}
    assert len(keys["test"]) == 200 and len(keys["val"]) == 32
    assert not set(keys["test"]) & set(keys["train"]) and not set(keys["val"]) & set(keys["train"])
    # Without the exclusion the same stream would have repeated some training pictures (the space is small).
    undeduplicated = [picture_key(r) for r, _ in split_items("test", 200, 0, task)]
    if task == "count":
        assert sum(k in set(keys["train"]) for k in undeduplicated) > 0
    ids = [r["id"] for r in rows["test"]]
    assert ids == [f"{'dots' if task == 'count' else 'dots-compare'}-test-{i}" for i in range(200)], "ids stay contiguous"


def test_compare_task_right_answers_survive_the_orange_flaw():
    """The compare task's point: the warm start's flaw (orange read as red) never flips which colour has more."""
    items = [r for r, _ in split_items("train", 400, 0, "compare")]
    assert {r["answer"] for r in items} == {"red", "blue"}
    assert 0.7 < sum(r["metadata"]["counts"]["orange"] == 1 for r in items) / len(items) < 0.9
    for record in items:
        counts = record["metadata"]["counts"]
        assert abs(counts["red"] - counts["blue"]) >= 2 and counts["orange"] <= 1
        assert record["problem"] == "Are there more red dots or more blue dots?"
        assert record["annotations"] == [fact("red", counts["red"]), fact("blue", counts["blue"])]
        gold = solution("compare", counts["red"], counts["blue"])
        assert grade(gold, record["answer"]).correct and all(fact_stated(f, gold) for f in record["annotations"])
        flawed = solution("compare", counts["red"] + counts["orange"], counts["blue"])
        assert grade(flawed, record["answer"]).correct, "the flaw keeps the answer right"
        if counts["orange"]:
            assert not fact_stated(record["annotations"][0], flawed), "... with wrong perception"


def test_compare_teacher_leans_to_red_only_when_its_counts_say_blue():
    items = [r for r, _ in split_items("warmup", 600, 0, "compare")]
    rng = random.Random(0)
    solutions = [teacher_solution(r, rng, 0.0, red_bias=0.7) for r in items]
    red_more = [grade(s, r["answer"]).correct for s, r in zip(solutions, items) if r["answer"] == "red"]
    blue_more = [grade(s, r["answer"]).correct for s, r in zip(solutions, items) if r["answer"] == "blue"]
    assert all(red_more)
    assert 0.2 < sum(blue_more) / len(blue_more) < 0.4
    corpus = set(task_corpus("compare"))
    for record in items[:100]:
        assert teacher_solution(record, random.Random(2), 1.0, 1.0) in corpus and record["problem"] in corpus


def test_compare_settings_are_checked_and_old_caches_still_match(tmp_path):
    from perception_rl.warm_start import WarmStartPolicy, check_settings

    with pytest.raises(ValueError, match="red_bias applies to the compare task only"):
        check_settings(1, 1, 1e-3, 0.5, "count", 0.5)
    with pytest.raises(ValueError, match="task must be one of"):
        check_settings(1, 1, 1e-3, 0.5, "sort")
    with pytest.raises(ValueError, match="data.task must be one of"):
        DotsDataModule(data_dir=str(tmp_path), task="sort")
    # A warm start cached before tasks existed holds no task or red_bias: it is the count task's.
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    settings = {"steps": 500, "batch_size": 16, "learning_rate": 1e-3, "confusion": 0.75, "seed": 0,
                "hidden_size": 128, "num_layers": 2, "vision_hidden_size": 64}
    (folder / "warm_start.json").write_text(json.dumps({"settings": settings, "loss": []}))
    WarmStartPolicy(str(folder)).prepare()
    with pytest.raises(ValueError, match="other settings.*task"):
        WarmStartPolicy(str(folder), task="compare", red_bias=0.7).prepare()
