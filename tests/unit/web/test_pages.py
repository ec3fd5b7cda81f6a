"""The HTML pages render from a real ledger, and their forms work without JavaScript."""

from __future__ import annotations

import re

import pytest

from contract.settings import Settings
from tests.helpers.web import client, seed_images


@pytest.fixture
def pages(settings: Settings):  # type: ignore[no-untyped-def]
    with client(settings) as c:
        c.headers["Accept"] = "text/html"
        yield c


def test_every_page_renders_with_its_json_twin(settings: Settings, session_factory, pages) -> None:
    seeded = seed_images(settings, session_factory, [("cat", 0.9), ("dog", 0.52), ("cat", 0.7)])
    for path, twin, text in (
        ("/", "/api/status", "without a person's label"),
        ("/browse", "/api/results", "img_00001.png"),
        ("/browse?label=cat&sort=-confidence", "/api/results?label=cat", "cat"),
        (f"/images/{seeded[0].sha256}", f"/api/images/{seeded[0].sha256}", "Seen at"),
        ("/review", "/api/review", "3</span> to go"),
        ("/failed", "/api/failed", "No failures"),
        ("/models", "/api/models", "base:resnet18:none"),
        ("/docs", "/openapi.json", "/api/labels"),
    ):
        response = pages.get(path)
        assert response.status_code == 200, (path, response.text[:500])
        assert response.headers["content-type"].startswith("text/html")
        assert f'href="{twin}' in response.text, path
        assert text in response.text, path
        assert "cdn" not in response.text.lower() and "https://" not in response.text, path
    browse = pages.get("/browse?limit=2").text
    assert browse.count('class="tile') == 2
    assert 'rel="next"' in browse and 'rel="prev"' not in browse
    assert "3 rows" in browse
    # The review page shows the least certain image first, even before its script runs.
    assert f"/api/images/{seeded[1].sha256}/thumbnail?size=large" in pages.get("/review").text


def test_forms_label_undo_and_retrain_without_javascript(
    settings: Settings, session_factory, pages
) -> None:
    (image,) = seed_images(settings, session_factory, [("cat", 0.6)])
    done = pages.post(
        f"/images/{image.sha256}/label?next=/review",
        data={"label": "tabby", "new_class": "true"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/review"
    # What it did is said once, on the page it leads to.
    review = pages.get("/review").text
    assert "Labeled “tabby”: a training example in labeled/tabby/" in review
    assert "Labeled “tabby”" not in pages.get("/review").text
    assert (settings.labeled_path / "tabby" / f"{image.sha256}.png").exists()
    assert "✓ tabby" in pages.get(f"/images/{image.sha256}").text
    # A redirect target off this site is ignored.
    away = pages.post(
        f"/images/{image.sha256}/unlabel?next=//evil.example/", follow_redirects=False
    )
    assert away.status_code == 303 and away.headers["location"] == f"/images/{image.sha256}"
    assert not (settings.labeled_path / "tabby" / f"{image.sha256}.png").exists()
    bad = pages.post(f"/images/{image.sha256}/label", data={"label": "../up"})
    assert bad.status_code == 422 and "cannot be a class name" in bad.text
    retrain = pages.post("/retrain?next=/models", follow_redirects=False)
    assert retrain.status_code == 303
    models_page = pages.get("/models").text
    assert re.search(r'class="flash ok"[^>]*>Training run \d+ queued', models_page)
    again = pages.post("/retrain?next=/models")
    assert "is already running: nothing more queued" in again.text
    assert "waiting for a training worker" in models_page and "Cancel run" in models_page
    run_id = int(re.search(r'action="/runs/(\d+)/cancel', models_page)[1])  # type: ignore[index]
    cancel = pages.post(f"/runs/{run_id}/cancel?next=/models", follow_redirects=False)
    assert cancel.status_code == 303 and cancel.headers["location"] == "/models"
    assert '<span class="badge cancelled">cancelled</span>' in pages.get("/models").text
    missing = pages.get(f"/images/{'0' * 64}")
    assert missing.status_code == 404 and "no image with content hash" in missing.text
