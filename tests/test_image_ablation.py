"""`data.image_ablation`: the control that shows a method the wrong picture (blank or another item's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from perception_rl.data import DotsDataModule, RecordDataModule
from perception_rl.data.synthetic import cell_colours


def _samples(dm, split: str = "train"):
    dm.prepare_data()
    dm.setup("fit" if split == "train" else "test")
    return [dm.datasets[split][i] for i in range(len(dm.datasets[split]))]


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


def test_blank_keeps_each_image_size_and_the_record(tmp_path):
    kwargs = dict(data_dir=str(tmp_path / "dots"), num_train=6, num_val=2, num_test=2)
    real = _samples(DotsDataModule(**kwargs))
    blank = _samples(DotsDataModule(**kwargs, image_ablation="blank"))
    for r, b in zip(real, blank):
        assert b.record == r.record and b.messages == r.messages
        assert b.images[0].size == r.images[0].size and b.images[0].getcolors() == [(84 * 84, (255, 255, 255))]
        assert cell_colours(r.images[0]), "the real picture has dots"


def test_shuffled_shows_another_items_picture_on_every_split(tmp_path):
    kwargs = dict(data_dir=str(tmp_path / "dots"), num_train=12, num_val=2, num_test=5)
    real, shuffled = _samples(DotsDataModule(**kwargs)), _samples(DotsDataModule(**kwargs, image_ablation="shuffled"))
    shown = []
    for i, s in enumerate(shuffled):
        assert s.record == real[i].record, "answer and annotations stay the item's own"
        matches = [j for j, r in enumerate(real) if _same(s.images[0], r.images[0])]
        assert matches and i not in matches, f"item {i} shows its own picture"
        shown.append(matches[0])
    assert len(set(shown)) == len(real), "every picture is shown once (a cycle, not a resample)"
    again = _samples(DotsDataModule(**kwargs, image_ablation="shuffled"))
    assert all(_same(a.images[0], b.images[0]) for a, b in zip(shuffled, again)), "the permutation is fixed"
    test = _samples(DotsDataModule(**kwargs, image_ablation="shuffled"), "test")
    real_test = _samples(DotsDataModule(**kwargs), "test")
    assert not any(_same(a.images[0], b.images[0]) for a, b in zip(test, real_test))


def test_bad_ablations_are_named(tmp_path):
    with pytest.raises(ValueError, match="data.image_ablation must be one of none, blank, shuffled, got 'noise'"):
        DotsDataModule(data_dir=str(tmp_path), image_ablation="noise")
    image = tmp_path / "a.png"
    Image.new("RGB", (32, 32), "red").save(image)
    (tmp_path / "one.jsonl").write_text(json.dumps({"id": "a", "problem": "p", "answer": "1", "images": ["a.png"]}) + "\n")
    dm = RecordDataModule(train_files=str(tmp_path / "one.jsonl"), image_ablation="shuffled")
    with pytest.raises(ValueError, match=r"shuffled needs two or more records with images, got one \(.*one.jsonl:1"):
        dm.setup("fit")


def test_a_resumed_evaluation_keeps_each_items_donor_and_rows_name_the_shown_picture(tmp_path):
    """A resumed `perception-rl test` keeps only the records still to do: each must still show its own donor."""
    from perception_rl.eval.evaluation import _shown_images

    dm = DotsDataModule(data_dir=str(tmp_path / "dots"), num_train=2, num_val=1, num_test=6, image_ablation="shuffled")
    dm.prepare_data()
    dm.setup("test")
    dataset = dm.datasets["test"]
    before = {s.record.id: s.shown.images for s in (dataset[i] for i in range(len(dataset)))}
    dataset.records = dataset.records[3:]  # what a resume does
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample.shown.images == before[sample.record.id] != sample.record.images
        assert _shown_images(sample) == [str(Path(p).resolve()) for p in sample.shown.images]
    blank = DotsDataModule(data_dir=str(tmp_path / "dots"), num_train=2, num_val=1, num_test=6, image_ablation="blank")
    blank.setup("test")
    assert _shown_images(blank.datasets["test"][0]) == [], "a blank canvas has no path"
    real = DotsDataModule(data_dir=str(tmp_path / "dots"), num_train=2, num_val=1, num_test=6)
    real.setup("test")
    assert _shown_images(real.datasets["test"][0]) == real.datasets["test"].records[0].images
