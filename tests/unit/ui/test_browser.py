"""The UI in a real headless Chromium (Debian's ``chromium`` package, driven by Playwright; no browser
download): the runs table, a run's loss chart, a live run's curve growing, a playground reply, and three
pairwise judgements made with the keyboard landing in the preference JSONL. Each screen is photographed
into the test's output folder; ``TUNESMITH_UI_SCREENSHOTS=docs/img`` copies them there for the README.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import requests

from tests.unit.ui.conftest import CHROMIUM, INSTALL, loss_rows
from tunesmith.serve.server import ServerThread
from tunesmith.ui.app import create_ui_app

if not CHROMIUM.exists():
    pytest.skip(f"browser tests need Chromium at {CHROMIUM}: {INSTALL}", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason=f"browser tests need Playwright: {INSTALL}")

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def server(runs_env):
    with ServerThread(create_ui_app(runs_env.root, recipes=None)) as srv:
        yield srv


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    target = os.environ.get("TUNESMITH_UI_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for png in folder.glob("*.png"):
            shutil.copy(png, Path(target) / png.name)


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        tab = browser.new_page(viewport={"width": 1200, "height": 800})
        errors: list[str] = []
        tab.on("pageerror", lambda err: errors.append(str(err)))
        tab.set_default_timeout(WAIT_MS)
        tab.base = server.url  # type: ignore[attr-defined]
        yield tab
        browser.close()
        assert errors == []  # no JavaScript error on any screen


def _points(page, chart: str, series: str) -> int:
    return int(page.get_attribute(f"#{chart} polyline[data-series={series}]", "data-points"))


def test_runs_table_lists_every_run(page, shots):
    page.goto(page.base + "/ui")
    page.wait_for_selector("#runs-table tbody tr[data-run]")
    assert sorted(page.locator("#runs-table tbody tr").evaluate_all("rs => rs.map(r => r.dataset.run)")) == [
        "chat",
        "live",
        "triage",
    ]
    triage = page.locator("tr[data-run=triage]").inner_text()
    assert "f1_macro 0.6000" in triage and "0.3000 → 0.6000" in triage and "FAILED" in triage
    page.fill("input[name=q]", "tri")
    assert page.locator("#runs-table tbody tr").count() == 1
    page.fill("input[name=q]", "")
    page.screenshot(path=shots / "ui-runs.png")


def test_run_page_draws_the_loss_chart(page, shots):
    page.goto(page.base + "/ui#/runs")
    page.click("a[href='#/run/chat']")
    page.wait_for_selector("#loss-chart polyline[data-series=val_loss]", state="attached")
    assert _points(page, "loss-chart", "train_loss") == 5 and _points(page, "loss-chart", "val_loss") == 1
    assert page.locator("#loss-chart circle[data-series=train_loss]").count() == 5
    assert _points(page, "metric-chart", "val_accuracy") == 1
    page.frame_locator("iframe[title=report]").locator("h1", has_text="chat").wait_for()  # report.html
    page.screenshot(path=shots / "ui-run.png")


def test_a_live_runs_curve_grows(page, runs_env, shots):
    live = runs_env.live
    live.metrics.write_text("".join(json.dumps(r) + "\n" for r in loss_rows(2)))
    page.goto(page.base + "/ui#/run/live")
    page.wait_for_function("document.querySelector('#loss-chart polyline')?.dataset.points === '2'")
    with open(live.metrics, "a") as fh:  # the trainer logs three more steps
        fh.write("".join(json.dumps(r) + "\n" for r in loss_rows(3, start=3)))
    page.wait_for_function("document.querySelector('#loss-chart polyline')?.dataset.points === '5'")
    page.screenshot(path=shots / "ui-live.png")
    live.write_summary({"status": "completed"})
    page.wait_for_function("document.querySelector('#run-status').textContent === 'completed'")
    live.summary.unlink()


def test_playground_reply_matches_the_api(page, server, shots):
    page.goto(page.base + "/ui#/playground/chat")
    page.check("input[value='chat@base']")
    page.check("input[value='triage']")  # a classification run: label probabilities, not a reply
    page.fill("input[name=max_tokens]", "6")
    page.fill("#prompt", "Say red")
    page.click("#send")
    page.wait_for_function(
        "[...document.querySelectorAll('.reply')].filter(r => r.textContent !== '…').length === 3"
    )
    shown = {
        col.get_attribute("data-model"): col.locator(".reply").text_content()
        for col in page.locator("[data-model]").all()
    }
    for model in ("chat", "chat@base"):
        body = {"model": model, "messages": [{"role": "user", "content": "Say red"}], "max_tokens": 6}
        body.update(temperature=0, top_p=1)
        answer = requests.post(server.url + "/v1/chat/completions", json=body, timeout=60).json()
        assert shown[model] == answer["choices"][0]["message"]["content"]
    probs = page.locator("[data-model=triage] .probs > div")
    assert probs.count() == 2 and probs.nth(0).inner_text().startswith("positive")
    page.screenshot(path=shots / "ui-playground.png")


def test_three_pairwise_judgements_with_the_keyboard(page, runs_env, shots):
    prefs, log = (
        runs_env.root / ".feedback" / "preferences.jsonl",
        runs_env.root / ".feedback" / "judgements.jsonl",
    )
    before = len(log.read_text().splitlines()) if log.exists() else 0
    pairs_before = len(prefs.read_text().splitlines()) if prefs.exists() else 0
    page.goto(page.base + "/ui#/pairwise")
    page.select_option("select[name=model_a]", "chat")
    page.select_option("select[name=model_b]", "chat@base")
    page.fill("input[name=judge]", "ann")
    page.fill("input[name=max_tokens]", "6")
    page.fill("textarea[name=prompts]", "Say red\nSay blue\nSay green")
    page.click("#pair-start")
    seen = []
    for i, key in enumerate("123"):
        page.wait_for_function(f"document.querySelector('#pair-count')?.textContent === '{i + 1} / 3'")
        seen.append((page.text_content("#reply-a"), page.text_content("#reply-b")))
        if i == 0:
            page.screenshot(path=shots / "ui-pairwise.png")
        page.locator("body").click(position={"x": 5, "y": 5})  # focus off the inputs: keys judge
        page.keyboard.press(key)
    page.wait_for_selector("#pair-done")
    judged = [json.loads(line) for line in log.read_text().splitlines()][before:]
    assert [j["choice"] for j in judged] == ["a", "b", "tie"]
    assert [(j["a"]["text"], j["b"]["text"]) for j in judged] == seen
    pairs = [json.loads(line) for line in prefs.read_text().splitlines()][pairs_before:]
    assert [(p["prompt"], p["judge"]) for p in pairs] == [("Say red", "ann"), ("Say blue", "ann")]
    assert pairs[0]["chosen"] == judged[0]["a"]["text"] and pairs[1]["chosen"] == judged[1]["b"]["text"]


def test_compare_screen(page, shots):
    page.goto(page.base + "/ui#/compare/chat,triage")
    page.wait_for_selector("#config-diff")
    assert page.locator(".chart polyline[data-series=chat]").count() == 2  # train_loss and val_loss charts
    assert "0.6000" in page.inner_text("#compare-metrics")
    page.screenshot(path=shots / "ui-compare.png", full_page=False)


def test_rating_with_the_keyboard_and_the_summary_on_the_run_page(page, shots):
    page.goto(page.base + "/ui#/rate/chat")
    page.fill("input[name=rater]", "bob")
    page.wait_for_selector("text=item 1 / 3")
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("4")
    page.wait_for_selector("text=item 2 / 3")
    page.screenshot(path=shots / "ui-rate.png")
    page.keyboard.press("5")
    page.wait_for_function("document.querySelector('#rating-summary').textContent.includes('over 2 ratings')")
    assert page.inner_text("#rating-summary") == "mean 4.50 over 2 ratings"
    page.goto(page.base + "/ui#/run/chat")
    page.wait_for_selector("#ratings-summary")
    assert page.inner_text("#ratings-summary").startswith("mean 4.50 over 2 ratings by 1 rater(s)")


def test_labelling_and_data_screens(page, runs_env, shots):
    rows = runs_env.root / "to-label.jsonl"
    rows.write_text('{"text": "lovely day"}\n{"text": "dreadful queue"}\n')
    page.goto(page.base + "/ui#/label")
    page.fill("input[name=path]", str(rows))
    page.fill("input[name=labels]", "positive, negative")
    page.fill("input[name=labeller]", "ann")
    page.click("button:text-is('Load')")
    page.wait_for_selector("text=lovely day")
    page.click("button:text-is('positive')")
    page.wait_for_selector("text=dreadful queue")
    page.click("button:text-is('negative')")
    page.wait_for_selector("text=All rows labelled.")
    labels = [
        json.loads(line) for line in (runs_env.root / ".feedback" / "labels.jsonl").read_text().splitlines()
    ]
    assert [(r["text"], r["label"]) for r in labels[-2:]] == [
        ("lovely day", "positive"),
        ("dreadful queue", "negative"),
    ]
    bad = runs_env.root / "mixed.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n'
    )
    page.goto(page.base + "/ui#/data")
    page.fill("input[name=path]", str(bad))
    page.click("button:text-is('Inspect')")
    page.frame_locator("iframe").locator("li", has_text="mixed.jsonl:2: invalid JSON").wait_for()
    page.screenshot(path=shots / "ui-data.png")
