"""The pages as a person meets them, in a real browser (Debian's chromium, driven by
Playwright) against the real `serve` process on a seeded ledger: Browse's filter form with
empty fields, its bulk actions and the flash messages they leave, Review's confirm before a
new class and its key overlay, and every page at 1280 and 390 px without a horizontal
scroll bar. The narrow pages are photographed into docs/screenshots/ for the docs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from contract.failures import FailureKind
from contract.labeled import LabeledSeen
from contract.records import Failed
from contract.settings import Settings
from db import suspects, versions
from db.batch_write import save_results
from db.engine import transaction
from db.models import Image, ModelStatus, ModelVersion, TrainingRun
from db.versions import ensure_base_model
from inbox_classifier.redis_server import free_port
from tests.helpers.browser import CHROMIUM, FLAGS, SHOTS, needs_browser
from tests.helpers.images import write_image
from tests.helpers.pipeline import record, wait_until
from tests.helpers.procs import running
from tests.helpers.web import CLASSES, seed_images

WIDE, NARROW = (1280, 800), (390, 844)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(300),
    needs_browser,
]
#: Ten classes with long names: the confusion matrix and the tables must still fit.
TEN = [
    "golden retriever",
    "tabby cat",
    "red fox",
    "snowy owl",
    "monarch butterfly",
    "garden snail",
    "sea turtle",
    "hot-air balloon",
    "fire truck",
    "espresso machine",
]


@contextmanager
def serving(settings: Settings, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with running(settings, "serve", "--port", str(port), log=log):
        wait_until(lambda: _answers(base), 60, "the web app\n" + _tail(log))
        yield base


@contextmanager
def browser_page(size: tuple[int, int]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.console_errors = errors
        try:
            yield page
        finally:
            browser.close()


def seed(settings: Settings, session_factory) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Twelve classified images, one failed, class folders in labeled/, and a trained
    version of ten classes with held-out scores: what the pages show."""
    seeded = seed_images(
        settings, session_factory, [(CLASSES[i % 4], 0.5 + i / 30) for i in range(12)]
    )
    (broken,) = record(session_factory, [write_image(settings.inbox / "broken.png", 901)])
    with transaction(session_factory) as session:
        base = ensure_base_model(session, "resnet18", "none", CLASSES)
        reason = "corrupt or truncated image: broken data stream"
        save_results(session, base.id, [], [Failed(broken.sha256, reason, FailureKind.CORRUPT)])
        ten = _trained_version(session, "v2")
        versions.record_score(session, ten.id, None, 60, 41)
        other = _trained_version(session, "v3")
        versions.record_score(session, ten.id, None, 100, 66)
        versions.record_score(session, other.id, None, 100, 71)
        runs = _runs(session, ten.id)
    files = [
        write_image(settings.labeled_path / name / f"{name}_0.png", 300 + len(name))
        for name in ("cat", "dog")
    ]
    # The finished run scored the labels: the cat it doubts most (the model says dog).
    with transaction(session_factory) as session:
        suspects.save_seen(
            session,
            runs[0],
            [
                LabeledSeen(
                    hashlib.sha256(path.read_bytes()).hexdigest(),
                    f"{path.parent.name}/{path.name}",
                    path.parent.name,
                    "train",
                    None,
                    suggested="dog" if path.parent.name == "cat" else "cat",
                    given_probability=round(0.1 + i * 0.3, 3),
                    score=round(0.9 - i * 0.3, 3),
                )
                for i, path in enumerate(files)
            ],
        )
    return {
        "cat": next(s.sha256 for s in seeded if s.label == "cat"),
        "failed": broken.sha256,
        "version": str(ten.id),
        "run": str(runs[0]),
        "running": str(runs[1]),
    }


def _runs(session, version_id: int) -> list[int]:  # type: ignore[no-untyped-def]
    """A finished run with a long message, and one still running, with their epochs."""
    epochs = [
        {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + e / 40, "val_loss": 1.1 / e,
         "val_acc": 0.45 + e / 40, "seconds": 12.5, "planned_epochs": 12}
        for e in range(1, 9)
    ]
    done = TrainingRun(
        status="promoted",
        trigger="labels",
        model_version_id=version_id,
        message="v2 promoted (held-out accuracy 0.710 vs 0.660 for v1 on 100 images): "
        "it does at least as well on the held-out images, so it replaces the active model",
        progress={"phase": "done", "epochs": 12, "epoch_log": epochs},
    )
    going = TrainingRun(
        status="running",
        trigger="manual",
        progress={"phase": "training", "epochs": 12, "epoch_log": epochs[:3]},
    )
    session.add_all([done, going])
    session.flush()
    return [done.id, going.id]


def _trained_version(session, name: str) -> ModelVersion:  # type: ignore[no-untyped-def]
    matrix = [[(9 if i == j else (i + j) % 3) for j in range(10)] for i in range(10)]
    report = {
        "accuracy": 0.71,
        "val_images": 120,
        "best_epoch": 7,
        "epochs_run": 10,
        "mode": "full",
        "started_from": "random weights",
        "gate": {"reason": "passed the gate: candidate 0.710 vs v2 0.660 on 100 held-out images"},
        "holdout": {
            "images": 100,
            "correct": 71,
            "accuracy": 0.71,
            "per_class_accuracy": dict.fromkeys(TEN, 0.7),
            "scored_on": "held-out",
        },
        "per_class_accuracy": dict.fromkeys(TEN, 0.71),
        "images_per_class": {c: {"train": 22, "val": 5, "holdout": 3} for c in TEN},
        "confusion_matrix": {
            "rows": "true class",
            "columns": "predicted class",
            "classes": TEN,
            "matrix": matrix,
        },
    }
    row = ModelVersion(
        name=name,
        arch="resnet18",
        weights="/nonexistent/model.pt",
        classes=TEN,
        status=ModelStatus.REJECTED.value,
        trained=True,
        val_accuracy=0.71,
        report=report,
    )
    session.add(row)
    session.flush()
    return row


def test_browse_filters_bulk_actions_and_flash_messages(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    ids = seed(settings, session_factory)
    with serving(settings, tmp_path) as base, browser_page(WIDE) as page:
        page.goto(f"{base}/browse")
        expect(page.locator("#total")).to_contain_text("13 rows")
        # The form sends every field, the empty ones too: that filters by the label alone.
        page.fill("input[name=label]", "cat")
        page.click("form[action='/browse'] button[type=submit]")
        expect(page.locator("#total")).to_contain_text("3 rows matching")
        assert "min_confidence=&" in page.url
        expect(page.locator(".tile .badge")).to_have_text(["cat"] * 3)
        # A bad value is an HTML page with the reason, not raw JSON.
        page.fill("input[name=since]", "yesterday-ish")
        page.click("form[action='/browse'] button[type=submit]")
        expect(page.locator("p.error")).to_contain_text("since")
        assert page.locator("h1").inner_text() == "422"
        page.console_errors.clear()  # that 422 was the point

        # Bulk: confirm the model's labels of two ticked images.
        page.goto(f"{base}/browse?label=cat")
        ticks = page.locator(".tile input[name=sha256]")
        ticks.nth(0).check()
        ticks.nth(1).check()
        expect(page.locator("#ticked")).to_have_text("2 ticked")
        page.click("button[value=confirm]")
        expect(page.locator("#flash")).to_contain_text(
            "Labeled 2 image(s) (the model's label confirmed)"
        )
        expect(page.locator(".tile .badge.human")).to_have_count(2)
        # A person's label settles an image: no "needs review" flag on its tile.
        assert page.locator(".tile:has(.badge.human) .flag").count() == 0
        page.reload()
        expect(page.locator("#flash")).to_have_count(0)  # shown once

        # Bulk relabel into a new class needs the box ticked; without it the reason is shown.
        page.locator(".tile input[name=sha256]").nth(2).check()
        page.fill("#bulk input[name=label]", "Cats")
        page.click("button[value=relabel]")
        expect(page.locator("#flash.warn")).to_contain_text("did you mean 'cat'")
        assert not (settings.labeled_path / "Cats").exists()

        # Retry a failed image from Browse.
        page.goto(f"{base}/browse?status=failed")
        page.locator(".tile input[name=sha256]").nth(0).check()
        page.click("button[value=retry]")
        expect(page.locator("#flash")).to_contain_text("1 image(s) sent to be classified again")

        # Retrain from the Models page says what it did.
        page.goto(f"{base}/models")
        page.evaluate("document.getElementById('retrain-form').submit()")  # no JS path
        expect(page.locator("#flash")).to_contain_text("Training run")
        errors = page.console_errors
        assert not errors, errors  # no missing favicon, no script error
    with transaction(session_factory) as session:
        confirmed = session.scalars(select(Image).where(Image.human_label.is_not(None))).all()
    assert len(confirmed) == 2 and {i.human_label for i in confirmed} == {"cat"}
    assert ids["failed"]


def test_review_asks_before_a_new_class_and_lists_its_keys(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    seed(settings, session_factory)
    with serving(settings, tmp_path) as base, browser_page(WIDE) as page:
        page.goto(f"{base}/review")
        # Every known class is offered (labeled/ folders and the model's head), in a stable
        # order: the folders of labeled/ first, then the model's classes, each by name.
        expect(page.locator("#class-count")).to_have_text(f"{len(CLASSES)} known")
        keys = page.locator("#classes li")
        expect(keys.first).to_contain_text("⇧1")
        expect(keys.first).to_contain_text("cat")
        order = keys.all_inner_texts()
        page.keyboard.press("?")
        expect(page.locator("#keys-help")).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.locator("#keys-help")).to_be_hidden()

        shown = _shown(page)
        page.keyboard.press("/")
        page.keyboard.type("Cats")
        page.keyboard.press("Enter")
        confirm = page.locator("#confirm-new")
        expect(confirm).to_be_visible()
        expect(confirm).to_contain_text("“Cats” is not one of the 4 known classes")
        confirm.locator("#confirm-matches button", has_text="cat").click()
        _wait_for_change(page, shown)
        wait_until(lambda: _human_labels(session_factory) == {shown: "cat"}, 20, "label cat")
        assert not (settings.labeled_path / "Cats").exists()

        second = _shown(page)
        page.keyboard.press("/")
        page.keyboard.type("lynx")
        page.keyboard.press("Enter")
        page.click("#confirm-create")
        _wait_for_change(page, second)
        wait_until(lambda: (settings.labeled_path / "lynx").is_dir(), 20, "labeled/lynx")
        expect(page.locator("#class-count")).to_have_text(f"{len(CLASSES) + 1} known")
        # A later visit keeps the keys where they were: cat (labeled first) then lynx.
        page.goto(f"{base}/review")
        again = page.locator("#classes li").all_inner_texts()
        assert again[0].endswith("cat") and again[1].endswith("lynx"), again
        assert [k.split()[-1] for k in again[2:]] == [
            k.split()[-1] for k in order if k.split()[-1] != "cat"
        ], (order, again)
        shown = _shown(page)
        page.keyboard.press("Shift+Digit2")  # lynx
        _wait_for_change(page, shown)
        wait_until(lambda: _human_labels(session_factory).get(shown) == "lynx", 20, "⇧2")


PAGES = ("/", "/browse", "/review", "/suspects", "/failed", "/models", "/docs")


def test_suspects_are_decided_from_the_keyboard_and_undone(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    seed(settings, session_factory)
    with serving(settings, tmp_path) as base, browser_page(WIDE) as page:
        # The first suspect is server-rendered; its keys act once the page has fetched its
        # queue (a key pressed before that did nothing, now and then in CI).
        with page.expect_response(lambda response: "/api/suspects?" in response.url):
            page.goto(f"{base}/suspects")
        expect(page.locator("#given")).to_have_text("cat")
        expect(page.locator("#suggested")).to_have_text("dog")
        expect(page.locator("#suspect-path")).to_have_text("labeled/cat/cat_0.png")
        page.keyboard.press("Enter")  # relabel as the model suggests
        expect(page.locator("#given")).to_have_text("dog")  # the next suspect
        wait_until(
            lambda: (settings.labeled_path / "dog" / "cat_0.png").is_file(), 20, "moved to dog/"
        )
        assert not (settings.labeled_path / "cat" / "cat_0.png").exists()
        page.keyboard.press("z")
        expect(page.locator("#given")).to_have_text("cat")
        wait_until(
            lambda: (settings.labeled_path / "cat" / "cat_0.png").is_file(), 20, "moved back"
        )
        page.keyboard.press("k")  # keep: it is a cat
        expect(page.locator("#given")).to_have_text("dog")
        page.keyboard.press("?")
        expect(page.locator("#keys-help")).to_be_visible()
        assert not page.console_errors, page.console_errors
    with transaction(session_factory) as session:
        assert [s.sha256 for s in suspects.suspects(session, 10)] == [
            hashlib.sha256((settings.labeled_path / "dog" / "dog_0.png").read_bytes()).hexdigest()
        ]


def test_a_run_has_its_page_and_failed_files_are_retried_from_the_failed_page(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    ids = seed(settings, session_factory)
    with serving(settings, tmp_path) as base, browser_page(WIDE) as page:
        page.goto(base + "/")
        page.click(f"a[href='/runs/{ids['running']}'] >> nth=0")
        expect(page.locator("h1")).to_contain_text(f"Training run {ids['running']}")
        expect(page.locator("table.epochs tbody tr")).to_have_count(3)
        assert page.locator("meta[http-equiv=refresh]").count() == 1  # it follows itself
        page.goto(f"{base}/runs/{ids['run']}")
        expect(page.locator(".message")).to_contain_text("v2 promoted")
        assert page.locator("meta[http-equiv=refresh]").count() == 0
        page.goto(f"{base}/failed")
        page.locator("table.failed button", has_text="retry").first.click()
        expect(page.locator("#flash")).to_contain_text("classified again")
    with transaction(session_factory) as session:
        failed = session.scalar(select(Image).where(Image.sha256 == ids["failed"]))
        assert failed is not None and failed.status == "queued"


def test_no_page_is_wider_than_its_viewport_at_1280_and_390_px(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    ids = seed(settings, session_factory)
    paths = [
        *PAGES,
        f"/images/{ids['cat']}",
        f"/models?version={ids['version']}",
        f"/runs/{ids['run']}",
    ]
    SHOTS.mkdir(parents=True, exist_ok=True)
    with serving(settings, tmp_path) as base:
        for size in (WIDE, NARROW):
            with browser_page(size) as page:
                for path in paths:
                    page.goto(base + path)
                    overflow = page.evaluate(
                        "[document.documentElement.scrollWidth, window.innerWidth]"
                    )
                    assert overflow[0] <= overflow[1], (size, path, overflow)
                    if size == NARROW:
                        name = path.strip("/").split("?")[0].replace("/", "-")[:20] or "overview"
                        if "version=" in path:
                            name = "models-ten-classes"
                        if name.startswith("images-"):
                            name = "image"
                        page.screenshot(path=SHOTS / f"narrow-{name}.png")
                if size == NARROW:
                    # The nav folds behind a menu button; Browse's filters behind theirs.
                    page.goto(f"{base}/browse")
                    nav = page.locator("header nav a", has_text="Models")
                    expect(nav).to_be_hidden()
                    page.click("label.menu-button")
                    expect(nav).to_be_visible()
                    expect(page.locator("input[name=label]").first).to_be_hidden()
                    page.click("label.fold-button")
                    expect(page.locator("input[name=label]").first).to_be_visible()
                    # Review: the model's choices are on the first screen.
                    page.goto(f"{base}/review")
                    first_choice = page.locator("#topk li").first
                    first_choice.wait_for(state="visible")  # the page's script fills it in
                    box = first_choice.bounding_box()
                    assert box is not None and box["y"] + box["height"] <= NARROW[1], box
                else:
                    page.goto(f"{base}/models?version={ids['version']}")
                    expect(page.locator(".score-chart rect")).to_have_count(2)
                    page.screenshot(path=SHOTS / "models-ten-classes.png", full_page=True)


def _answers(base: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/api/status", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _shown(page: Any) -> str:
    src = page.locator("#review-image").get_attribute("src") or ""
    return src.split("/api/images/")[1].split("/")[0]


def _wait_for_change(page: Any, sha: str) -> None:
    page.wait_for_function(
        "sha => !document.querySelector('#review-image').src.includes(sha)", arg=sha, timeout=10_000
    )


def _human_labels(sessions) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with transaction(sessions) as session:
        rows = session.execute(
            select(Image.sha256, Image.human_label).where(Image.human_label.is_not(None))
        ).all()
    return {sha: label for sha, label in rows}
