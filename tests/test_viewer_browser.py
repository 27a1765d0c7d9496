"""`perception-rl view` in a real browser: a short `perception-rl fit` (the rollout log on every step) and a
`perception-rl test` of it, the page they give, opened from file:// in headless Debian chromium through
selenium. What the page shows is checked against the parquet files and predictions.jsonl themselves.

Skipped (with the reason) only when /usr/bin/chromium or /usr/bin/chromedriver is missing; scripts/setup.sh
installs both (Debian packages chromium, chromium-driver).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT
from test_cli import run_cli

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
G, GROUPS_LOGGED, STEPS = 4, 3, 4
FILTERS = ("right_answer_wrong_perception", "judge_failed", "truncated", "zero_advantage")


@pytest.fixture(scope="module")
def viewed_run(tmp_path_factory, tiny_model_dir) -> Path:
    """4 GRPO steps of demo-like settings (3 of 4 groups logged per step, a judge that sometimes cannot be
    read, an accuracy reward a random policy sometimes earns), the test run of its checkpoint, the page."""
    root = tmp_path_factory.mktemp("viewed")
    (root / "extra.yaml").write_text(yaml.safe_dump({
        "trainer": {"callbacks": [
            {"class_path": "perception_rl.RolloutLog", "init_args": {"every_n_steps": 1, "max_groups": GROUPS_LOGGED}},
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}},
        ]},
        "model": {
            "rewards": [
                {"class_path": "helpers.AnyDigitAccuracy", "init_args": {"weight": 0.9}},
                {"class_path": "perception_rl.FormatReward", "init_args": {"weight": 0.1}},
                {"class_path": "perception_rl.PerceptionReward",
                 "init_args": {"weight": 0.5, "judge": {"class_path": "helpers.PatchyJudge"}}},
            ],
            "rollout": {"class_path": "perception_rl.HFGenerateEngine",
                        "init_args": {"num_generations": G, "max_new_tokens": 24}},
        },
    }))
    run_cli(
        "fit", "--config", str(REPO_ROOT / "configs/demo.yaml"), "--config", str(root / "extra.yaml"),
        f"--trainer.max_steps={STEPS}", f"--trainer.default_root_dir={root}", "--trainer.val_check_interval=null",
        f"--model.policy.model_path={tiny_model_dir}", "--model.export_hf_model=false", "--data.batch_size=4",
        f"--data.data_dir={root / 'dots'}", "--data.num_train=8", "--data.num_val=2", "--data.num_test=6",
    )
    version = root / "logs" / "version_0"
    run_cli("test", "--config", str(version / "config.yaml"), "--ckpt_path", str(version / "checkpoints" / "last.ckpt"))
    out = run_cli("view", str(root)).stdout
    assert out.strip().splitlines()[-1] == str(root / "view.html")
    return root


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver; "
                    "scripts/setup.sh does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver's path given too, selenium-manager is not consulted
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1200,800", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def parquet_steps(root: Path) -> dict[int, list[dict]]:
    from perception_rl.rollout_log import read_step

    return {read_step(p)[1]["step"]: read_step(p)[0] for p in sorted((root / "rollouts").glob("step_*.parquet"))}


def expected(rows: list[dict], name: str) -> dict[int, set[int]]:
    """group -> samples the filter `name` should show, computed from the rows as written."""
    groups: dict[int, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    if name == "zero_advantage":
        return {g: {r["sample"] for r in rs} for g, rs in groups.items() if all(r["advantage"] == 0 for r in rs)}

    def passes(row: dict) -> bool:
        items = row["judge/visual/items"]
        if name == "right_answer_wrong_perception":
            return (row["reward/accuracy"] == 1.0 and row["judge/visual/failure"] is None and bool(items)
                    and any(i != "correct" for i in items))
        if name == "judge_failed":
            return row["judge/visual/failure"] is not None
        return row["truncated"]

    shown = {g: {r["sample"] for r in rs if passes(r)} for g, rs in groups.items()}
    return {g: samples for g, samples in shown.items() if samples}


# Each shown group as [record id, group index, samples not dimmed]; the images not (yet) decoded.
SHOWN = """return [...document.querySelectorAll('#groups .group')].map(g => [g.dataset.recordId,
  Number(g.dataset.group), [...g.querySelectorAll('.response:not(.dimmed)')].map(r => Number(r.dataset.sample))]);"""
BROKEN_IMAGES = """return [...document.querySelectorAll(arguments[0])]
  .filter(i => !(i.complete && i.naturalWidth > 0)).length;"""
IDS = "return [...document.querySelectorAll(arguments[0])].map(i => i.dataset.id);"


def open_page(browser, root: Path) -> None:
    browser.get((root / "view.html").as_uri())
    assert browser.execute_script("return document.body.dataset.ready") == "true", browser.get_log("browser")


def pick_step(browser, step: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "step-picker")).select_by_value(str(step))


def test_each_step_shows_its_groups_with_their_images(browser, viewed_run, tmp_path):
    steps = parquet_steps(viewed_run)
    assert sorted(steps) == list(range(1, STEPS + 1))
    open_page(browser, viewed_run)
    shown_ids = {}
    for step in [STEPS, *range(1, STEPS)]:  # the page opens on the last step
        if step != STEPS:
            pick_step(browser, step)
        rows = steps[step]
        shown = browser.execute_script(SHOWN)
        assert len(shown) == GROUPS_LOGGED == len({r["group"] for r in rows})
        in_file = sorted({(r["record_id"], r["group"]) for r in rows}, key=lambda pair: pair[1])
        assert [(rid, g) for rid, g, _ in shown] == in_file
        assert all(samples == list(range(G)) for _, _, samples in shown), "G responses per group, none dimmed"
        assert browser.execute_script(BROKEN_IMAGES, "img.prompt-image") == 0, "every image decoded"
        assert browser.execute_script("return document.querySelectorAll('img.prompt-image').length") >= GROUPS_LOGGED
        shown_ids[step] = [rid for rid, _, _ in shown]
        if step == STEPS:
            browser.save_screenshot(str(tmp_path / "training.png"))
    assert len({tuple(ids) for ids in shown_ids.values()}) > 1, "switching steps changes the groups shown"
    assert (tmp_path / "training.png").stat().st_size > 10_000


def test_each_filter_shows_exactly_what_the_parquet_says(browser, viewed_run):
    from selenium.webdriver.common.by import By

    steps = parquet_steps(viewed_run)
    open_page(browser, viewed_run)
    nonempty = set()
    for step, rows in steps.items():
        pick_step(browser, step)
        for name in FILTERS:
            box = browser.find_element(By.CSS_SELECTOR, f'#training-filters input[data-filter="{name}"]')
            box.click()
            want = expected(rows, name)
            got = {group: set(samples) for _, group, samples in browser.execute_script(SHOWN)}
            assert got == want, f"step {step}, filter {name}"
            count = browser.find_element(By.CSS_SELECTOR, f'[data-count="{name}"]').text
            assert count == f"({len(want) if name == 'zero_advantage' else sum(map(len, want.values()))})"
            nonempty |= {name} if want else set()
            box.click()
        assert len(browser.execute_script(SHOWN)) == GROUPS_LOGGED, "all filters off: every group again"
    assert {"right_answer_wrong_perception", "judge_failed"} <= nonempty, f"filters never exercised: {nonempty}"


def test_verdict_colours_follow_the_judges_items(browser, viewed_run):
    steps = parquet_steps(viewed_run)
    open_page(browser, viewed_run)
    pick_step(browser, 1)
    colours = browser.execute_script("""return [...document.querySelectorAll('#groups .group')].map(g =>
      [...g.querySelectorAll('.response')].map(r =>
        [...r.querySelectorAll('ul.verdicts li')].map(li => li.dataset.verdict)));""")
    rows = sorted(steps[1], key=lambda r: (r["group"], r["sample"]))
    assert [v for group in colours for v in group] == [r["judge/visual/items"] for r in rows]


def test_the_test_results_tab(browser, viewed_run, tmp_path):
    from selenium.webdriver.common.by import By

    rows = [json.loads(line) for line in (viewed_run / "eval" / "test" / "predictions.jsonl").read_text().splitlines()]
    open_page(browser, viewed_run)
    browser.find_element(By.CSS_SELECTOR, 'nav button[data-tab="test-0"]').click()
    items = "#test-0 .item"
    assert browser.execute_script(IDS, items) == [r["id"] for r in rows]
    assert browser.execute_script("return document.querySelectorAll('#test-0 img.item-image').length") == len(rows)
    assert browser.execute_script(BROKEN_IMAGES, "#test-0 img.item-image") == 0
    for name, want in (("correct", [r["id"] for r in rows if r["correct"]]),
                       ("wrong", [r["id"] for r in rows if not r["correct"]]),
                       ("right_answer_wrong_perception",
                        [r["id"] for r in rows if r["correct"] and r["perception_correct"] is False]),
                       ("truncated", [r["id"] for r in rows if r["truncated"]])):
        box = browser.find_element(By.CSS_SELECTOR, f'#test-0 input[data-filter="{name}"]')
        box.click()
        assert browser.execute_script(IDS, items) == want, name
        box.click()
    browser.save_screenshot(str(tmp_path / "test.png"))


def test_a_test_folder_alone_is_viewed_too(browser, viewed_run):
    folder = viewed_run / "eval" / "test"
    out = run_cli("view", str(folder)).stdout.strip().splitlines()[-1]
    assert out == str(folder / "view.html")
    open_page(browser, folder)
    tabs = browser.execute_script("return [...document.querySelectorAll('nav button')].map(b => b.dataset.tab)")
    assert tabs == ["test-0"]
    assert browser.execute_script("return document.querySelectorAll('.item').length") == len(
        (folder / "predictions.jsonl").read_text().splitlines())


def test_the_page_loads_nothing_from_the_network(viewed_run):
    html = (viewed_run / "view.html").read_text()
    for needle in ("http://", "https://", "src=\"//", "@import"):
        assert needle not in html.replace("http://www.w3.org/2000/svg", ""), needle
    assert os.path.getsize(viewed_run / "view.html") < 5_000_000
