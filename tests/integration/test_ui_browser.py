"""The live page in a real browser (Playwright driving Debian's Chromium) against `trackstream local`, with runs
logged by the SDK in other processes, as a user would watch them. Each test saves a screenshot under
``.cache/test-artifacts/ui/`` (the README's image comes from there)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from test_alerts_local import Hook
from test_local import _cli_json, _env, _owner_url, _start_local, _wait_for

from trackstream.alert_rules import save_rule
from trackstream.schemas.alerts import make_rule

ARTIFACTS = Path(__file__).resolve().parents[2] / ".cache" / "test-artifacts" / "ui"
PROJECT = "browser"

SWEEP = """
import math, trackstream as ts
for i, lr in enumerate([0.1, 0.01, 0.001]):
    with ts.start_run("browser", name=f"lr-{lr}", run_id=f"r{i}", params={"lr": lr, "bs": 32}) as run:
        for step in range(300):
            value = 2.0 / (1 + step * lr * 10) + 0.01 * i
            run.log_metric("loss", math.nan if (i == 0 and step >= 200) else value, step=step)
"""

# A training process that keeps its run open and logs one point per line it reads, flushing each to the spool.
LIVE = """
import sys, trackstream as ts
run = ts.start_run("browser", name="live-run", run_id="live", params={"lr": 0.5, "bs": 32})
for step in range(50):
    run.log_metric("loss", 1.0 / (1 + step), step=step)
run.flush()
print("ready", flush=True)
for line in sys.stdin:
    step, value = line.split()
    run.log_metric("loss", float(value), step=int(step))
    run.flush()
    print("logged", flush=True)
run.finish()
"""


@dataclass
class Ui:
    url: str  # the page's URL with the token, as printed
    base: str
    env: dict[str, str]
    data: Path


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Ui]:
    data, spool = tmp_path / "data", tmp_path / "spool"
    env = _env(spool, data)
    log = tmp_path / "local.log"
    local = _start_local(env, log)
    try:
        _wait_for(lambda: _owner_url(data) is not None and "trackstream UI: " in log.read_text(), timeout_s=120,
                  what="the local runner's page")
        url = log.read_text().split("trackstream UI: ", 1)[1].split()[0]
        parts = urlsplit(url)
        yield Ui(url, f"{parts.scheme}://{parts.netloc}", env, data)
    finally:
        local.terminate()
        local.wait(60)


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield tab
    finally:
        context.close()
    assert not errors, errors  # no uncaught script error on any page


def shot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def stored(ui: Ui, runs: int) -> None:
    """Wait until the local runner has stored ``runs`` runs of the project (read through it, by the CLI)."""
    query = f"SELECT count() AS n FROM entities FINAL WHERE project = '{PROJECT}'"
    _wait_for(lambda: _cli_json(ui.env, "sql", query)[0]["n"] >= runs, timeout_s=120, what="the runs stored")


def test_without_the_token_the_page_and_the_api_refuse(ui: Ui, page: Any) -> None:
    answer = page.goto(ui.base + "/")
    assert answer is not None
    assert answer.status == 401
    assert "Not authorised" in page.content()
    assert page.request.get(ui.base + "/app.js").status == 401
    assert page.request.post(ui.base + "/api/v1/projects", data="{}",
                             headers={"Content-Type": "application/json"}).status == 401
    assert page.request.get(ui.base + f"/api/v1/events?project={PROJECT}").status == 401
    shot(page, "refused-without-token")


def test_logged_runs_appear_in_the_runs_table(ui: Ui, page: Any) -> None:
    subprocess.run([sys.executable, "-c", SWEEP], env=ui.env, check=True, timeout=180)
    stored(ui, 3)  # the page lists the projects it finds when it opens
    page.goto(ui.url)
    assert urlsplit(page.url).query == ""  # the token left the address bar for a cookie
    for name in ("lr-0.1", "lr-0.01", "lr-0.001"):
        page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
    page.get_by_text("NaN:100@200").first.wait_for(timeout=30_000)  # the diverged run is flagged
    shot(page, "runs-table")
    page.goto(ui.base + f"/#/p/{PROJECT}/curves?metric=loss&runs=r0,r1,r2")
    page.locator(".legend-value[data-last-step='299']").nth(2).wait_for(timeout=30_000)
    shot(page, "curves")


def test_a_point_logged_by_the_sdk_appears_on_an_open_curve(ui: Ui, page: Any) -> None:
    trainer = subprocess.Popen([sys.executable, "-c", LIVE], env=ui.env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert trainer.stdout is not None
        assert trainer.stdin is not None
        assert trainer.stdout.readline().strip() == "ready"
        stored(ui, 1)
        page.goto(ui.url)
        page.goto(ui.base + f"/#/p/{PROJECT}/curves?metric=loss&runs=live")
        page.locator(".legend-value[data-last-step='49']").wait_for(timeout=60_000)
        delays = []
        for step in range(50, 55):
            trainer.stdin.write(f"{step} {0.5 / step}\n")
            trainer.stdin.flush()
            assert trainer.stdout.readline().strip() == "logged"
            logged = time.monotonic()
            page.locator(f".legend-value[data-last-step='{step}']").wait_for(timeout=30_000)
            delays.append(time.monotonic() - logged)
        shot(page, "curves-live")
        sys.stderr.write(f"flushed-to-visible delays (s): {', '.join(f'{d:.2f}' for d in delays)}\n")
    finally:
        if trainer.stdin is not None:
            trainer.stdin.close()
        trainer.wait(60)


def test_a_nan_raises_an_alert_that_the_page_shows_and_the_webhook_receives(ui: Ui, page: Any) -> None:
    hook = Hook()
    trainer = subprocess.Popen([sys.executable, "-c", LIVE], env=ui.env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        save_rule(ui.data, make_rule(PROJECT, "loss", "nan", webhook=hook.url))
        assert trainer.stdout is not None
        assert trainer.stdin is not None
        assert trainer.stdout.readline().strip() == "ready"
        stored(ui, 1)
        page.goto(ui.url)
        page.goto(ui.base + f"/#/p/{PROJECT}/curves?metric=loss&runs=live")
        page.locator(".legend-value[data-last-step='49']").wait_for(timeout=60_000)
        assert page.locator(".alert-toast").count() == 0
        trainer.stdin.write("50 nan\n")
        trainer.stdin.flush()
        assert trainer.stdout.readline().strip() == "logged"
        logged = time.monotonic()
        toast = page.locator(".alert-toast[data-run='live']")
        toast.wait_for(timeout=30_000)
        sys.stderr.write(f"flushed-to-alert-shown: {time.monotonic() - logged:.2f} s\n")
        assert "nan on loss" in toast.inner_text()
        page.locator("#alerts[data-firing='1']").wait_for(timeout=10_000)
        _wait_for(lambda: len(hook.bodies) >= 1, timeout_s=60, what="the webhook's POST")
        page.locator(".alerts-button").click()
        row = page.locator(".alerts-table tbody tr").first
        row.wait_for(timeout=10_000)
        assert "firing" in row.inner_text()
        assert "50" in row.inner_text()
        shot(page, "alert")
        page.keyboard.press("Escape")

        def log(step: int, value: str) -> None:
            assert trainer.stdin is not None
            assert trainer.stdout is not None
            trainer.stdin.write(f"{step} {value}\n")
            trainer.stdin.flush()
            assert trainer.stdout.readline().strip() == "logged"

        log(51, "0.4")  # resolves: the pop-up goes
        page.locator("#alerts[data-firing='0']").wait_for(timeout=30_000)
        page.wait_for_function("() => document.querySelectorAll('.alert-toast').length === 0", timeout=30_000)
        for step in range(52, 57):  # a flapping rule: one pop-up for the pair, not one per firing
            log(step, "nan" if step % 2 == 0 else "0.3")
        page.locator("#alerts[data-firing='1']").wait_for(timeout=30_000)
        page.locator(".alert-toast[data-run='live']").wait_for(timeout=30_000)
        assert page.locator(".alert-toast").count() == 1
    finally:
        hook.close()
        if trainer.stdin is not None:
            trainer.stdin.close()
        trainer.wait(60)
    assert hook.bodies[0]["entity_id"] == "live"
    assert (hook.bodies[0]["state"], hook.bodies[0]["step"]) == ("firing", 50)


LONG = """
import trackstream as ts
with ts.start_run("browser", name="long", run_id="long") as run:
    run.log_metrics({"loss": [1.0 / (1 + s) for s in range(5000)]})
"""


def test_a_zoom_reads_the_range_again_down_to_every_step(ui: Ui, page: Any) -> None:
    subprocess.run([sys.executable, "-c", LONG], env=ui.env, check=True, timeout=180)
    stored(ui, 1)
    page.goto(ui.url)
    page.goto(ui.base + f"/#/p/{PROJECT}/curves?metric=loss&runs=long")
    page.locator(".legend-value[data-last-step='4999']").wait_for(timeout=60_000)
    box = page.locator(".u-over").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.40, y)  # drag over ~1% of 5,000 steps
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.41, y, steps=5)
    page.mouse.up()
    page.get_by_text("zoomed: every step (full resolution)").wait_for(timeout=30_000)
    shot(page, "curves-zoomed")


MODELS = """
import trackstream as ts
for version in (1, 2, 3):
    with ts.model("browser", "resnet", version=version) as model:
        for step in range(20):
            model.log_metric("val_loss", 1.0 / (1 + step * version), step=step)
        model.log_metric("accuracy", 0.7 + 0.05 * version)
"""


def test_a_page_opened_before_its_project_exists_shows_it_once_logged(ui: Ui, page: Any) -> None:
    page.goto(ui.url)
    page.goto(ui.base + f"/#/p/{PROJECT}/curves?metric=loss&runs=r0,r1,r2")
    page.get_by_text("Waiting for it to be logged").wait_for(timeout=30_000)
    subprocess.run([sys.executable, "-c", SWEEP], env=ui.env, check=True, timeout=180)
    page.locator(".legend-value[data-last-step='299']").nth(2).wait_for(timeout=60_000)


def test_models_have_their_table_page_curves_and_comparison(ui: Ui, page: Any) -> None:
    subprocess.run([sys.executable, "-c", SWEEP + MODELS], env=ui.env, check=True, timeout=180)
    stored(ui, 3)
    page.goto(ui.url)
    page.goto(ui.base + f"/#/p/{PROJECT}")
    page.get_by_role("tab", name="Models").click()  # the project holds both: a tab for each
    for version in (1, 2, 3):
        page.get_by_text(f"resnet:{version}", exact=True).first.wait_for(timeout=60_000)
    assert page.locator(".count").inner_text() == "3 models"
    page.goto(ui.base + f"/#/p/{PROJECT}/run/resnet:2?type=model")
    versions = page.locator(".versions-table tbody tr")
    versions.nth(2).wait_for(timeout=30_000)
    assert [versions.nth(i).locator("td").nth(0).inner_text() for i in range(3)] == [
        "resnet:1", "resnet:2", "resnet:3"]
    assert versions.nth(2).locator("td").nth(2).inner_text() == "0.85"  # the last accuracy of version 3
    shot(page, "model")
    page.goto(ui.base + f"/#/p/{PROJECT}/curves?type=model&metric=val_loss&runs=resnet:1,resnet:3")
    page.locator(".legend-value[data-last-step='19']").nth(1).wait_for(timeout=30_000)
    page.goto(ui.base + f"/#/p/{PROJECT}/compare?type=model&metric=accuracy&agg=last")
    page.locator(".chart-note", has_text="3 models").wait_for(timeout=30_000)
    page.locator(".tabulator-row", has_text="resnet:3").wait_for(timeout=30_000)


MANY = """
import trackstream as ts
for i in range(450):
    with ts.start_run("browser", name=f"many-{i:03d}", run_id=f"m{i:03d}",
                      params={"lr": [0.1, 0.01, 0.001][i % 3], "seed": i}) as run:
        run.log_metric("loss", 1.0 + i / 1000, step=0)
        run.log_metric("loss", 0.5 + (i * 7919 % 450) / 1000, step=1)
"""


def test_the_runs_table_searches_sorts_and_pages_on_the_server(ui: Ui, page: Any) -> None:
    subprocess.run([sys.executable, "-c", MANY], env=ui.env, check=True, timeout=300)
    stored(ui, 450)
    asked: list[dict[str, Any]] = []
    page.on("request", lambda r: asked.append(orjson.loads(r.post_data or "{}"))
            if r.url.endswith("/api/v1/runs_table") else None)
    page.goto(ui.url)
    page.goto(ui.base + f"/#/p/{PROJECT}")
    count = page.locator(".count")
    page.wait_for_function("() => document.querySelector('.count')?.textContent === '450 runs'", timeout=60_000)
    rows = page.locator(".tabulator-row")
    assert rows.first.inner_text().startswith("many-449")  # newest first
    page.locator("input.search").fill("lr=0.01 many-0")  # runs 1, 4, ... under 100
    page.wait_for_function("() => document.querySelector('.count')?.textContent === '33 of 450 runs'",
                           timeout=30_000)
    assert asked[-1]["search"] == "lr=0.01 many-0"
    page.locator(".tabulator-row", has_text="many-004").locator(".tabulator-cell").first.click()  # select a run
    page.locator("input.search").fill("")
    page.wait_for_function("() => document.querySelector('.count')?.textContent === '450 runs · 1 selected'",
                           timeout=30_000)  # the selection outlives the search
    page.locator(".tabulator-col[tabulator-field='metric:loss:min'] .tabulator-col-title").click()
    # the smallest min of loss: step 1's 0.5 + (i * 7919 % 450) / 1000 is 0.5 at i = 0
    page.wait_for_function("() => document.querySelector('.tabulator-row .tabulator-cell[tabulator-field=\"name\"]')"
                           "?.textContent === 'many-000'", timeout=30_000)
    assert asked[-1]["sort"] == [{"field": "metric:loss:min", "dir": "asc"}]
    assert all(body.get("page") == 1 for body in asked)  # 200 rows a page: only the first one so far
    with page.expect_request(lambda r: r.url.endswith("/api/v1/runs_table")
                             and orjson.loads(r.post_data or "{}").get("page") == 2, timeout=30_000):
        page.locator(".tabulator-tableholder").evaluate("e => { e.scrollTop = e.scrollHeight; }")
    page.wait_for_function("() => document.querySelectorAll('.tabulator-row').length > 0", timeout=30_000)
    assert asked[-1]["sort"] == [{"field": "metric:loss:min", "dir": "asc"}]  # the same order, further on
    shot(page, "runs-table-sorted")
    assert count.inner_text() == "450 runs · 1 selected"
    page.get_by_role("button", name="Curves of selected runs").click()
    page.wait_for_url("**/curves?metric=loss&runs=m004", timeout=30_000)


PARSE = """async () => {
  const { parseJson, fromWire } = await import("/api.js");
  const bits = (x) => {
    const v = new DataView(new ArrayBuffer(8));
    v.setFloat64(0, x);
    return v.getBigUint64(0).toString();
  };
  const low = '{"a": [1.5, {"$f64": 9218868437227405313}], "b": {"$f64": 9221120237041090560}}';
  const usual = '{"a": [1.5, {"$f64": 9218868437227405312}], "b": {"$f64": 18442240474082181120}}';
  const x = fromWire(parseJson(low)), y = fromWire(parseJson(usual));
  return [x.a[0], bits(x.a[1]), bits(x.b), y.a[1], bits(y.b)];
}"""


def test_the_page_reads_non_finite_floats_bit_for_bit(ui: Ui, page: Any) -> None:
    page.goto(ui.url)
    got = page.evaluate(PARSE)
    # A NaN whose payload is not an exact double (the reviver's path), the usual NaN, +Inf and -Inf (the fast one).
    assert got == [1.5, "9218868437227405313", "9221120237041090560", float("inf"), "18442240474082181120"]
