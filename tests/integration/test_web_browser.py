"""The web app in a real browser (Debian's chromium, driven by Playwright) against a real
`inbox-classifier up` on weights none: a person opens the review page, labels ten images
from the keyboard (two new classes, typed once, then picked with a key), undoes one, and
presses retrain on the models page; the trained version is promoted, the unreviewed rows
are rescored by it, and every page is photographed into docs/screenshots/ for the docs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from contract.settings import Settings
from db.engine import transaction
from db.models import Image, ImageStatus, Label, ModelVersion
from inbox_classifier.redis_server import free_port
from tests.helpers.browser import CHROMIUM, FLAGS, SHOTS, needs_browser
from tests.helpers.images import random_image
from tests.helpers.pipeline import count, wait_until
from tests.helpers.procs import running

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    needs_browser,
]


def tinted(path: Path, seed: int, colour: tuple[int, int, int]) -> str:
    """A noisy photo-like image with a strong tint; returns its sha256."""
    base = random_image(seed, (160, 120))
    PILImage.blend(base, PILImage.new("RGB", base.size, colour), 0.6).save(path, quality=90)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_review_from_the_keyboard_then_retrain_from_the_browser(
    settings: Settings, session_factory, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    staging = tmp_path / "staging"
    staging.mkdir()
    colour_of: dict[str, str] = {}
    for i in range(30):
        colour = ("red", (220, 30, 30)) if i % 2 else ("blue", (30, 60, 220))
        sha = tinted(staging / f"photo_{i:02d}.jpg", i, colour[1])
        colour_of[sha] = colour[0]
    (staging / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG after all")
    env = {
        "INBOX_CLASSIFIER_WEB_PORT": str(port),
        "INBOX_CLASSIFIER_TRAIN_MODE": "frozen",
        "INBOX_CLASSIFIER_TRAIN_EPOCHS": "8",
        "INBOX_CLASSIFIER_TRAIN_LR": "0.01",
        "INBOX_CLASSIFIER_RETRAIN_AFTER_LABELS": "0",  # retraining comes from the button
        "INBOX_CLASSIFIER_RETRAIN_INTERVAL_S": "null",
    }
    log = tmp_path / "up.log"
    base = f"http://127.0.0.1:{port}"
    with running(settings, "up", "--weights", "none", log=log, **env):
        for path in sorted(staging.iterdir()):
            shutil.move(path, settings.inbox / path.name)
        wait_until(
            lambda: count(session_factory, ImageStatus.DONE, ImageStatus.FAILED) == 31,
            240,
            "31 classified or failed\n" + log.read_text(errors="replace")[-3000:],
        )
        wait_until(lambda: _answers(base), 60, "the web app\n" + log.read_text()[-3000:])
        SHOTS.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{base}/")
            expect(page.locator(".card.done .figure")).to_have_text("30")
            page.screenshot(path=SHOTS / "overview.png", full_page=True)

            page.goto(f"{base}/review")
            expect(page.locator("#remaining")).to_have_text("30")
            wanted = {"red": 5, "blue": 5}
            classes: list[str] = []
            labeled: dict[str, str] = {}
            for _ in range(30):
                if not any(wanted.values()):
                    break
                sha = _shown(page)
                colour = colour_of[sha]
                if wanted[colour] == 0:
                    page.keyboard.press("s")  # skip: enough of this colour
                    _wait_for_change(page, sha)
                    continue
                if colour in classes:
                    page.keyboard.press(f"Shift+Digit{classes.index(colour) + 1}")
                else:
                    page.keyboard.press("/")
                    page.keyboard.type(colour)
                    page.keyboard.press("Enter")
                    # No known class is called that: the page asks before starting one.
                    page.click("#confirm-create")
                    classes.append(colour)
                wanted[colour] -= 1
                labeled[sha] = colour
                _wait_for_change(page, sha)
                if len(labeled) == 3:
                    page.screenshot(path=SHOTS / "review.png")
            assert not any(wanted.values()), wanted
            expect(page.locator("#reviewed")).to_have_text("10")
            # One more, taken back: its label and its training copy are gone.
            extra = _shown(page)
            page.keyboard.press("Enter")
            _wait_for_change(page, extra)
            page.wait_for_timeout(300)  # the label is sent in the background
            page.keyboard.press("z")
            expect(page.locator("#reviewed")).to_have_text("10")
            assert _shown(page) == extra
            wait_until(lambda: _labels(session_factory) == labeled, 20, "10 labels in the ledger")
            for colour in ("red", "blue"):
                files = sorted(p.name for p in (settings.labeled_path / colour).iterdir())
                expected = sorted(f"{s}.jpg" for s, c in labeled.items() if c == colour)
                assert files == expected, colour
            assert not any(extra in p.name for p in settings.labeled_path.rglob("*"))

            page.goto(f"{base}/browse")
            expect(page.locator(".tile")).to_have_count(31)
            page.screenshot(path=SHOTS / "browse.png", full_page=True)
            page.goto(f"{base}/images/{next(iter(labeled))}")
            expect(page.locator(".about h1 .badge.human")).to_be_visible()
            page.screenshot(path=SHOTS / "image.png", full_page=True)
            page.goto(f"{base}/failed")
            expect(page.locator("table.failed tbody tr")).to_have_count(1)
            page.screenshot(path=SHOTS / "failed.png", full_page=True)

            page.goto(f"{base}/models")
            page.click("#retrain")
            expect(page.locator("#run-progress")).to_be_visible()
            page.wait_for_timeout(1500)
            page.screenshot(path=SHOTS / "models-training.png")
            # The page reloads itself when the run ends; the trained version is active.
            expect(page.locator("tr.active td a")).to_have_text("v2", timeout=300_000)
            expect(page.locator("section.version")).to_contain_text("Validation accuracy")
            page.screenshot(path=SHOTS / "models.png", full_page=True)
            page.goto(f"{base}/docs")
            page.screenshot(path=SHOTS / "api.png")
            browser.close()

        # The backfill: the unreviewed rows are rescored by the promoted version.
        def rescored() -> bool:
            with transaction(session_factory) as session:
                active = session.scalars(
                    select(ModelVersion).where(ModelVersion.name == "v2")
                ).one()
                stale = session.execute(
                    select(func.count())
                    .select_from(Image)
                    .where(
                        Image.status != ImageStatus.FAILED,
                        Image.human_label.is_(None),
                        Image.model_version_id != active.id,
                    )
                ).scalar_one()
            return stale == 0

        wait_until(rescored, 120, "unreviewed rows rescored by v2\n" + log.read_text()[-3000:])
        with transaction(session_factory) as session:
            labels = {
                i.sha256: i.human_label
                for i in session.scalars(select(Image).where(Image.human_label.is_not(None)))
            }
        assert labels == labeled  # a rescore never overwrites a person's label


def _answers(base: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/api/status", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _shown(page) -> str:  # type: ignore[no-untyped-def]
    src = page.locator("#review-image").get_attribute("src") or ""
    return src.split("/api/images/")[1].split("/")[0]


def _wait_for_change(page, sha: str) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_function(
        "sha => !document.querySelector('#review-image').src.includes(sha)", arg=sha, timeout=10_000
    )


def _labels(sessions) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with transaction(sessions) as session:
        rows = session.execute(
            select(Image.sha256, Label.label)
            .join(Label, Label.image_id == Image.id)
            .where(Label.undone_at.is_(None))
        ).all()
    return {sha: label for sha, label in rows}
