"""The JSON API on a real migrated SQLite ledger, real image files in the inbox and the test
Redis: filters, keyset pages, the review order, labels and their training copies, and the
errors a person or an attacker can provoke."""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from sqlalchemy import select

from contract.records import Classified, SeenFile
from contract.settings import Settings
from db.batch_write import save_results
from db.engine import transaction
from db.ledger import record_files
from db.models import Image, Label, RunStatus, TrainingRun
from db.versions import ensure_base_model
from tests.helpers.web import CLASSES, client, seed_images, topk


@pytest.fixture
def api(settings: Settings):  # type: ignore[no-untyped-def]
    with client(settings) as c:
        yield c


def _all_pages(api, **params) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = api.get("/api/results", params=query)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [(i["sha256"], i["path"]) for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen


def test_results_filters_and_item_shape(settings: Settings, session_factory, api) -> None:
    seeded = seed_images(
        settings, session_factory, [("cat", 0.95), ("cat", 0.55), ("dog", 0.8), ("bird", 0.3)]
    )
    items = api.get("/api/results").json()["items"]
    assert len(items) == 4
    assert set(items[0]) >= {
        "path",
        "sha256",
        "status",
        "label",
        "label_source",
        "model_label",
        "confidence",
        "topk",
        "model_version",
        "error",
        "error_kind",
        "classified_at",
    }
    assert {i["label_source"] for i in items} == {"model"}

    def shas(**params: object) -> set[str]:
        return {i["sha256"] for i in api.get("/api/results", params=params).json()["items"]}

    by = {s.label + str(s.confidence): s.sha256 for s in seeded}
    assert shas(label="cat") == {by["cat0.95"], by["cat0.55"]}
    assert shas(min_confidence=0.6) == {by["cat0.95"], by["dog0.8"]}
    assert shas(max_confidence=0.5) == {by["bird0.3"]}
    assert shas(label="cat", min_confidence=0.9) == {by["cat0.95"]}
    assert shas(path_glob="*/img_00002.png") == {by["dog0.8"]}
    assert shas(status="done") == set(by.values()) and shas(status="failed") == set()
    assert shas(since="1h") == set(by.values()) and shas(since="2099-01-01") == set()
    assert shas(reviewed="true") == set()
    assert api.get("/api/results", params={"status": "nope"}).status_code == 422
    assert api.get("/api/results", params={"since": "yesterday-ish"}).status_code == 422
    assert api.get("/api/results", params={"min_confidence": 2}).status_code == 422

    # A person's label wins: it is what `label` shows and filters on; the model's stays.
    assert (
        api.post(
            "/api/labels", json={"sha256": by["bird0.3"], "label": "owl", "new_class": True}
        ).status_code
        == 201
    )
    (owl,) = api.get("/api/results", params={"label": "owl"}).json()["items"]
    assert owl["label_source"] == "human" and owl["model_label"] == "bird"
    assert shas(reviewed="true") == {by["bird0.3"]}
    assert shas(reviewed="false") == set(by.values()) - {by["bird0.3"]}
    counts = {c["label"]: c["images"] for c in api.get("/api/labels").json()["items"]}
    assert counts == {"cat": 2, "dog": 1, "owl": 1}


def test_cursor_pages_over_ten_thousand_rows_have_no_duplicates_and_no_gaps(
    settings: Settings, session_factory, api
) -> None:
    rng = random.Random(7)
    total = 10_000
    with transaction(session_factory) as session:
        files = [SeenFile(f"/in/{i:05d}.jpg", f"{i:064x}", 10, 1) for i in range(total)]
        # A few images seen at two paths: (image, path) rows, as `results` gives them.
        files += [
            SeenFile(f"/in/copy-{i:05d}.jpg", f"{i:064x}", 10, 1) for i in range(0, total, 997)
        ]
        record_files(session, files)
        base = ensure_base_model(session, "resnet18", "none", CLASSES)
        results = []
        for i in range(total):
            # Many ties in confidence, so the id tie-break carries the order.
            conf = round(rng.choice([0.25, 0.5, 0.75]) + rng.random() * 0.001 * (i % 3), 6)
            label = CLASSES[i % len(CLASSES)]
            results.append(Classified(f"{i:064x}", label, conf, topk(label, conf)))
        save_results(session, base.id, results)
    expected = {(f.sha256, f.path) for f in files}
    for sort in ("newest", "oldest", "confidence", "-confidence"):
        rows = _all_pages(api, sort=sort, limit=500)
        assert len(rows) == len(set(rows)) == len(expected), sort
        assert set(rows) == expected, sort
    confidences = [
        i["confidence"]
        for i in api.get("/api/results", params={"sort": "confidence", "limit": 500}).json()[
            "items"
        ]
    ]
    assert confidences == sorted(confidences)
    cats = _all_pages(api, label="cat", sort="-confidence", limit=333)
    assert len(cats) == len(set(cats)) == sum(1 for s, _ in expected if int(s, 16) % 4 == 0)
    # A cursor belongs to its sort order; garbage is refused with a 400, not a 500.
    first = api.get("/api/results", params={"sort": "newest", "limit": 10}).json()
    assert (
        api.get(
            "/api/results", params={"sort": "oldest", "cursor": first["next_cursor"]}
        ).status_code
        == 400
    )
    for bad in ("garbage", "e30", "W10", "x" * 300):
        assert api.get("/api/results", params={"cursor": bad}).status_code == 400, bad


def test_review_serves_the_least_certain_first_and_labeled_images_leave_it(
    settings: Settings, session_factory, api
) -> None:
    seeded = seed_images(
        settings, session_factory, [("cat", 0.9), ("dog", 0.51), ("bird", 0.7), ("fish", 0.6)]
    )
    page = api.get("/api/review", params={"limit": 3}).json()
    assert [i["confidence"] for i in page["items"]] == [0.51, 0.6, 0.7]  # margins 0.02, 0.2, 0.4
    assert page["remaining"] == 4
    rest = api.get("/api/review", params={"limit": 3, "cursor": page["next_cursor"]}).json()
    assert [i["confidence"] for i in rest["items"]] == [0.9] and rest["next_cursor"] is None

    dog = next(s for s in seeded if s.label == "dog")
    assert api.post("/api/labels", json={"sha256": dog.sha256, "label": "dog"}).status_code == 201
    after = api.get("/api/review").json()
    assert dog.sha256 not in {i["sha256"] for i in after["items"]} and after["remaining"] == 3
    assert api.delete(f"/api/labels/{dog.sha256}").status_code == 200
    assert api.get("/api/review").json()["items"][0]["sha256"] == dog.sha256


def test_labels_write_training_copies_and_undo_removes_them(
    settings: Settings, session_factory, api
) -> None:
    (first, second) = seed_images(settings, session_factory, [("cat", 0.6), ("dog", 0.7)])
    made = api.post(
        "/api/labels",
        json={"sha256": first.sha256, "label": "tabby", "reviewer": "ana", "new_class": True},
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["label"] == "tabby" and body["label_source"] == "human"
    assert body["labels"][0]["reviewer"] == "ana" and body["labels"][0]["model_label"] == "cat"
    copy = settings.labeled_path / "tabby" / f"{first.sha256}.png"
    assert copy.read_bytes() == first.path.read_bytes()
    assert os.stat(copy).st_ino == os.stat(first.path).st_ino  # a hard link, not a second copy

    # Correcting it moves the training copy; the history keeps both.
    moved = api.post(
        "/api/labels", json={"sha256": first.sha256, "label": "lion", "new_class": True}
    ).json()
    assert not copy.exists() and (settings.labeled_path / "lion" / f"{first.sha256}.png").exists()
    assert [a["label"] for a in moved["labels"]] == ["tabby", "lion"]
    assert moved["labels"][0]["undone_at"] is not None and moved["labels"][1]["undone_at"] is None

    api.post("/api/labels", json={"sha256": second.sha256, "label": "lion"})  # known now
    classes = api.get("/api/classes").json()["items"]
    assert classes[0] == {"name": "lion", "labeled_images": 2, "in_model": False, "key": 1}
    assert {c["name"] for c in classes} == {"lion", *CLASSES}  # the model's head counts too
    assert not (settings.labeled_path / "tabby").exists()  # the corrected class's empty folder
    undone = api.delete(f"/api/labels/{first.sha256}")
    assert undone.status_code == 200 and undone.json()["label_source"] == "model"
    assert sorted(p.name for p in (settings.labeled_path / "lion").iterdir()) == [
        f"{second.sha256}.png"
    ]
    assert api.delete(f"/api/labels/{first.sha256}").status_code == 404  # nothing left to undo
    with transaction(session_factory) as session:
        image = session.scalars(select(Image).where(Image.sha256 == first.sha256)).one()
        assert image.human_label is None and image.label == "cat"
        assert len(session.scalars(select(Label).where(Label.image_id == image.id)).all()) == 2

    # The training copy is a real ImageFolder entry: the trainer's scan lists it.
    from worker.training.dataset import list_labeled

    assert [f.rel for f in list_labeled(settings.labeled_path).files] == [
        f"lion/{second.sha256}.png"
    ]


def test_bad_labels_unknown_hashes_and_vanished_files_get_clear_errors(
    settings: Settings, session_factory, api
) -> None:
    (image,) = seed_images(settings, session_factory, [("cat", 0.6)])
    for bad in (
        "",
        "../escape",
        "a/b",
        ".hidden",
        "_val",
        "x\x00y",
        " padded",
        "\u200bzero",
        "é" * 101,
    ):
        response = api.post("/api/labels", json={"sha256": image.sha256, "label": bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["detail"]
    assert not settings.labeled_path.exists() or not any(settings.labeled_path.rglob("*.png"))
    unknown = "f" * 64
    missing = api.post("/api/labels", json={"sha256": unknown, "label": "cat"})
    assert missing.status_code == 404 and unknown in missing.json()["detail"]
    assert api.post("/api/labels", json={"sha256": "not-a-hash", "label": "cat"}).status_code == 422
    assert (
        api.post(
            "/api/labels", content=b"{not json", headers={"Content-Type": "application/json"}
        ).status_code
        == 422
    )
    assert api.get(f"/api/images/{unknown}").status_code == 404

    image.path.unlink()
    gone = api.post("/api/labels", json={"sha256": image.sha256, "label": "cat"})
    assert gone.status_code == 409 and "no longer in the inbox" in gone.json()["detail"]
    assert api.get(f"/api/images/{image.sha256}/original").status_code == 410
    assert api.get(f"/api/images/{image.sha256}/thumbnail").status_code == 410
    assert api.get(f"/api/images/{image.sha256}").status_code == 200  # the record stays


def test_thumbnails_are_cached_and_a_decompression_bomb_is_a_422(
    settings: Settings, session_factory, api
) -> None:
    (image,) = seed_images(settings, session_factory, [("cat", 0.6)], size=(1600, 1200))
    thumb = api.get(f"/api/images/{image.sha256}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert "immutable" in thumb.headers["cache-control"]
    large = api.get(f"/api/images/{image.sha256}/thumbnail", params={"size": "large"})
    assert large.status_code == 200 and len(large.content) > len(thumb.content)
    from io import BytesIO

    from PIL import Image as PILImage

    assert PILImage.open(BytesIO(thumb.content)).size == (320, 240)
    assert PILImage.open(BytesIO(large.content)).size == (1024, 768)
    assert (
        api.get(f"/api/images/{image.sha256}/thumbnail", params={"size": "huge"}).status_code == 422
    )
    cached = list((settings.data_dir / "thumbs").rglob(f"{image.sha256}.jpg"))
    assert len(cached) == 2
    original = api.get(f"/api/images/{image.sha256}/original")
    assert original.content == image.path.read_bytes()
    assert original.headers["content-type"] == "image/png"
    assert "sandbox" in original.headers["content-security-policy"]

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    bomb = settings.inbox / "bomb.png"
    bomb.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )
    import hashlib

    sha = hashlib.sha256(bomb.read_bytes()).hexdigest()
    with transaction(session_factory) as session:
        record_files(
            session, [SeenFile(str(bomb), sha, bomb.stat().st_size, bomb.stat().st_mtime_ns)]
        )
    refused = api.get(f"/api/images/{sha}/thumbnail")
    assert refused.status_code == 422 and "pixel" in refused.json()["detail"]


def test_nothing_outside_the_inbox_can_be_served_whatever_the_path_or_the_hash(
    settings: Settings, session_factory, api, tmp_path: Path
) -> None:
    import hashlib

    secret = tmp_path / "secret.png"
    seed_images(settings, session_factory, [("cat", 0.6)])
    from tests.helpers.images import write_image

    write_image(secret, 99)
    secret_sha = hashlib.sha256(secret.read_bytes()).hexdigest()
    link = settings.inbox / "link.png"
    link.symlink_to(secret)
    with transaction(session_factory) as session:
        # A ledger that (by a bug, or tampering) holds paths outside the inbox, and a symlink
        # inside it that leads out: neither may be served.
        record_files(
            session,
            [
                SeenFile(str(secret), secret_sha, 10, 1),
                SeenFile(str(link), secret_sha, 10, 1),
                SeenFile(str(settings.inbox / ".." / secret.name), secret_sha, 10, 1),
            ],
        )
    for suffix in ("original", "thumbnail"):
        assert api.get(f"/api/images/{secret_sha}/{suffix}").status_code == 410
    assert api.post("/api/labels", json={"sha256": secret_sha, "label": "cat"}).status_code == 409
    for attempt in (
        "/api/images/..%2F..%2Fetc%2Fpasswd/original",
        "/api/images/../../etc/passwd",
        "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd/thumbnail",
        f"/api/images/{secret_sha[:-1]}%2F/original",
        "/api/models/1/..%2F..%2F..%2Fetc%2Fpasswd.png",
        "/api/models/..%2F1/curves.png",
        "/static/..%2F..%2Fcontract%2Fsettings.py",
        "/static/../web/app.py",
    ):
        response = api.get(attempt)
        assert response.status_code in (404, 422), (attempt, response.status_code)
        assert b"root:" not in response.content and b"BaseSettings" not in response.content
    assert api.delete("/api/labels/..%2F..%2Fetc").status_code in (404, 422)
    assert api.get("/api/results", params={"path_glob": "../../*"}).json()["items"] == []


def test_a_token_is_required_off_loopback_and_then_on_every_request(
    settings: Settings, session_factory
) -> None:
    from web.security import RefusedBind, check_bind

    with pytest.raises(RefusedBind, match="INBOX_CLASSIFIER_WEB_TOKEN"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    token = "t0ken-" + "x" * 20
    with pytest.raises(ValueError, match="16 characters"):
        Settings(web_token="short")
    guarded = settings.model_copy(update={"web_token": Settings(web_token=token).web_token})
    with client(guarded, host="0.0.0.0") as c:
        assert c.get("/api/status").status_code == 401
        assert (
            c.get(
                "/api/status", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}
            ).status_code
            == 401
        )
        assert c.get("/api/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert c.get("/metrics").status_code == 401
        page = c.get("/review", headers={"Accept": "text/html"}, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
        assert c.get("/static/app.css").status_code == 200  # the login page's stylesheet
        assert c.post("/login", data={"token": "nope", "next": "/"}).status_code == 401
        login = c.post("/login", data={"token": token, "next": "/review"}, follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/review"
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/api/status").status_code == 200  # the cookie now
        # Off loopback, other host names are fine (the token protects).
        assert c.get("/api/status", headers={"Host": "classifier.lan"}).status_code == 200


def test_cross_origin_writes_and_foreign_host_names_are_refused(
    settings: Settings, session_factory, api
) -> None:
    (image,) = seed_images(settings, session_factory, [("cat", 0.6)])
    body = {"sha256": image.sha256, "label": "cat"}
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1:9999"},  # another port is another origin
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        assert api.post("/api/labels", json=body, headers=headers).status_code == 403, headers
        assert (
            api.post(
                f"/images/{image.sha256}/label", data={"label": "x"}, headers=headers
            ).status_code
            == 403
        )
        assert api.post("/api/retrain", headers=headers).status_code == 403
    assert not settings.labeled_path.exists()
    same = api.post("/api/labels", json=body, headers={"Origin": "http://127.0.0.1:8000"})
    assert same.status_code == 201
    # Bound to loopback, the app answers to loopback names only (no DNS rebinding).
    assert api.get("/api/status", headers={"Host": "evil.example"}).status_code == 400
    assert api.get("/api/status", headers={"Host": "localhost:8000"}).status_code == 200


def test_retrain_and_enough_labels_queue_a_run_on_the_train_queue(
    settings: Settings, session_factory
) -> None:
    s = settings.model_copy(update={"retrain_after_labels": 3})
    seeded = seed_images(s, session_factory, [("cat", 0.6)] * 4)
    queue = redis.Redis.from_url(s.redis_url or "")
    with client(s) as api:
        for image in seeded[:2]:
            body = {"sha256": image.sha256, "label": "a", "new_class": True}
            assert api.post("/api/labels", json=body).status_code == 201
        assert queue.llen("train") == 0
        body = {"sha256": seeded[2].sha256, "label": "b", "new_class": True}
        assert api.post("/api/labels", json=body).status_code == 201
        assert queue.llen("train") == 1  # the third label asked for a run
        api.post("/api/labels", json={"sha256": seeded[3].sha256, "label": "b"})
        assert queue.llen("train") == 1  # one is queued already: no second
        with transaction(session_factory) as session:
            (run,) = session.scalars(select(TrainingRun)).all()
            assert run.trigger == "labels" and run.status == RunStatus.RUNNING
        manual = api.post("/api/retrain", json={"force": True})
        assert manual.status_code == 202 and manual.json()["trigger"] == "manual"
        assert queue.llen("train") == 2
        runs = api.get("/api/runs").json()["items"]
        assert [r["trigger"] for r in runs] == ["manual", "labels"]
        assert api.get(f"/api/runs/{manual.json()['id']}").json()["progress"] == {"phase": "queued"}
        # Cancelled before a worker took it: at once (the worker then finds it finished).
        cancelled = api.post(f"/api/runs/{manual.json()['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and cancelled["finished_at"]
        assert api.post("/api/runs/999/cancel").status_code == 404
    queue.close()


def test_failed_images_grouped_by_kind_and_retried(
    settings: Settings, session_factory, api
) -> None:
    from contract.failures import FailureKind
    from contract.records import Failed
    from tests.helpers.images import write_image
    from tests.helpers.pipeline import record

    paths = [write_image(settings.inbox / f"bad_{i}.png", 500 + i) for i in range(3)]
    seeded = [SimpleNamespace(sha256=w.sha256) for w in record(session_factory, paths)]
    with transaction(session_factory) as session:
        base = ensure_base_model(session, "resnet18", "none", CLASSES)
        save_results(
            session,
            base.id,
            [],
            [
                Failed(seeded[0].sha256, "corrupt or truncated image: x", FailureKind.CORRUPT),
                Failed(seeded[1].sha256, "corrupt or truncated image: y", FailureKind.CORRUPT),
                Failed(seeded[2].sha256, "empty file (0 bytes)", FailureKind.EMPTY),
            ],
        )
    assert api.get("/api/failed/kinds").json()["items"] == [
        {"kind": "corrupt", "images": 2},
        {"kind": "empty", "images": 1},
    ]
    corrupt = api.get("/api/failed", params={"kind": "corrupt"}).json()["items"]
    assert {i["error_kind"] for i in corrupt} == {"corrupt"} and len(corrupt) == 2
    assert api.get("/api/failed", params={"kind": "bogus"}).status_code == 422
    retried = api.post("/api/failed/retry", json={"kind": "corrupt"})
    assert retried.status_code == 200 and retried.json()["queued"] == 2
    classify = redis.Redis.from_url(settings.redis_url or "")
    assert classify.llen("classify") == retried.json()["messages"] >= 1
    classify.close()
    assert api.get("/api/failed/kinds").json()["items"] == [{"kind": "empty", "images": 1}]
    assert api.post("/api/failed/retry", json={}).status_code == 422


def test_models_promote_rollback_and_metrics(settings: Settings, session_factory, api) -> None:
    seed_images(settings, session_factory, [("cat", 0.6), ("dog", 0.7)])
    with transaction(session_factory) as session:
        other = ensure_base_model(session, "resnet50", "none", CLASSES)  # now active
        other_id = other.id
    listing = api.get("/api/models").json()
    assert listing["held_out"] == [] and listing["held_out_history"] == []
    models = listing["items"]
    assert [m["status"] for m in models] == ["active", "retired"]
    first = models[1]["id"]
    assert api.post(f"/api/models/{first}/promote").json() == {
        "active": "base:resnet18:none",
        "previous": "base:resnet50:none",
    }
    assert api.post("/api/models/rollback").json()["active"] == "base:resnet50:none"
    assert api.post("/api/models/999/promote").status_code == 404
    assert api.get(f"/api/models/{other_id}").json()["report"] is None
    metrics = api.get("/metrics").text
    assert 'inbox_classifier_images{status="done"} 2.0' in metrics
    assert "inbox_classifier_review_backlog 2.0" in metrics
    assert 'inbox_classifier_queue_depth{queue="classify"} 0.0' in metrics
    assert 'name="base:resnet50:none"' in metrics
    status = api.get("/api/status").json()
    assert status["images"]["done"] == 2 and status["review_backlog"] == 2
    assert status["queue_depth"] == {"classify": 0, "train": 0}


def test_a_label_that_is_no_known_class_needs_a_confirm_and_names_close_matches(
    settings: Settings, session_factory, api
) -> None:
    first, second = seed_images(settings, session_factory, [("cat", 0.6), ("dog", 0.7)])
    typo = api.post("/api/labels", json={"sha256": first.sha256, "label": "Cats"})
    assert typo.status_code == 422
    detail = typo.json()["detail"]
    assert "'Cats' is not a known class" in detail and "'cat'" in detail and "new_class" in detail
    assert not (settings.labeled_path / "Cats").exists()
    made = api.post(
        "/api/labels", json={"sha256": first.sha256, "label": "lynx", "new_class": True}
    )
    assert made.status_code == 201 and (settings.labeled_path / "lynx").is_dir()
    # Undo removes the training copy and the class folder it leaves empty.
    assert api.delete(f"/api/labels/{first.sha256}").status_code == 200
    assert not (settings.labeled_path / "lynx").exists()
    # A class folder a person made in labeled/ is known without a confirm.
    (settings.labeled_path / "ferret").mkdir(parents=True)
    assert (
        api.post("/api/labels", json={"sha256": second.sha256, "label": "ferret"}).status_code
        == 201
    )


def test_failed_images_cannot_be_labeled_and_their_page_has_no_label_form(
    settings: Settings, session_factory, api
) -> None:
    from contract.failures import FailureKind
    from contract.records import Failed
    from tests.helpers.images import write_image
    from tests.helpers.pipeline import record

    seed_images(settings, session_factory, [("cat", 0.6)])  # "cat" is a known class
    (image,) = record(session_factory, [write_image(settings.inbox / "broken.png", 77)])
    with transaction(session_factory) as session:
        base = ensure_base_model(session, "resnet18", "none", CLASSES)
        reason = "corrupt or truncated image: broken data stream"
        save_results(session, base.id, [], [Failed(image.sha256, reason, FailureKind.CORRUPT)])
    refused = api.post("/api/labels", json={"sha256": image.sha256, "label": "cat"})
    assert refused.status_code == 422 and "could not be decoded" in refused.json()["detail"]
    bulk = api.post("/api/bulk/labels", json={"sha256s": [image.sha256], "label": "cat"})
    assert (
        bulk.json()["labeled"] == 0
        and "could not be decoded" in bulk.json()["refused"][0]["detail"]
    )
    assert not settings.labeled_path.exists() or not any(settings.labeled_path.rglob("*.png"))
    page = api.get(f"/images/{image.sha256}", headers={"Accept": "text/html"}).text
    assert 'id="label-form"' not in page and "cannot be labeled" in page


def test_bulk_labels_confirm_or_relabel_each_image_on_its_own(
    settings: Settings, session_factory, api
) -> None:
    seeded = seed_images(settings, session_factory, [("cat", 0.6), ("dog", 0.7), ("bird", 0.8)])
    confirmed = api.post("/api/bulk/labels", json={"sha256s": [s.sha256 for s in seeded[:2]]})
    assert confirmed.status_code == 200 and confirmed.json()["labeled"] == 2
    assert {p.parent.name for p in settings.labeled_path.rglob("*.png")} == {"cat", "dog"}
    unknown = "e" * 64
    moved = api.post(
        "/api/bulk/labels", json={"sha256s": [seeded[2].sha256, unknown], "label": "fish"}
    ).json()
    assert moved["labeled"] == 1 and moved["refused"][0]["sha256"] == unknown
    assert (settings.labeled_path / "fish" / f"{seeded[2].sha256}.png").exists()
    assert api.post("/api/bulk/labels", json={"sha256s": []}).status_code == 422


def test_results_pages_go_back_and_forth_with_a_total(
    settings: Settings, session_factory, api
) -> None:
    seed_images(settings, session_factory, [("cat", 0.5 + i / 100) for i in range(7)])
    for sort in ("newest", "oldest", "confidence", "-confidence"):
        everything = api.get("/api/results", params={"sort": sort, "limit": 50}).json()
        order = [i["sha256"] for i in everything["items"]]
        assert everything["total"] == 7 and not everything["total_is_lower_bound"]
        assert everything["prev_cursor"] is None and everything["next_cursor"] is None
        pages, cursor = [], None
        while True:
            page = api.get(
                "/api/results",
                params={"sort": sort, "limit": 3, **({"cursor": cursor} if cursor else {})},
            ).json()
            pages.append(page)
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [i["sha256"] for p in pages for i in p["items"]] == order, sort
        assert pages[0]["prev_cursor"] is None and pages[1]["prev_cursor"]
        # Back from the last page gives the middle one, then the first.
        back = api.get(
            "/api/results", params={"sort": sort, "limit": 3, "cursor": pages[2]["prev_cursor"]}
        ).json()
        assert back["items"] == pages[1]["items"] and back["next_cursor"]
        first = api.get(
            "/api/results", params={"sort": sort, "limit": 3, "cursor": back["prev_cursor"]}
        ).json()
        assert first["items"] == pages[0]["items"] and first["prev_cursor"] is None
    assert api.get("/api/results", params={"min_confidence": 0.54}).json()["total"] == 3
