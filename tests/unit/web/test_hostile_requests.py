"""Inputs an attacker (or a fuzzer) sends the web app, each of which used to answer a 500, read a
body whole, or make a class out of a look-alike: every one now gets a 4xx with a reason."""

from __future__ import annotations

import base64
import unicodedata

import pytest
import redis
from sqlalchemy import select

from contract.settings import Settings
from db.engine import transaction
from db.models import TrainingRun
from tests.helpers.web import client, seed_images

HUGE = "99999999999999999999"  # past a 64-bit integer


@pytest.fixture
def api(settings: Settings):  # type: ignore[no-untyped-def]
    with client(settings) as c:
        yield c


@pytest.mark.parametrize(
    "path",
    [
        f"/api/models/{HUGE}",
        f"/api/models/{HUGE}/quality",
        f"/api/runs/{HUGE}",
        "/api/models/9223372036854775808",  # 2**63: one past the largest row id
    ],
)
def test_ids_past_64_bits_are_a_422_not_a_500(api, path: str) -> None:  # type: ignore[no-untyped-def]
    response = api.get(path)
    assert response.status_code == 422, response.text
    assert "less than or equal to" in response.json()["detail"]


@pytest.mark.parametrize("path", [f"/api/models/{HUGE}/promote", f"/api/runs/{HUGE}/cancel"])
def test_posts_with_huge_ids_are_a_422(api, path: str) -> None:  # type: ignore[no-untyped-def]
    assert api.post(path).status_code == 422


def _cursor(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor(f'["newest",{HUGE},1]'),  # numbers past what the database holds
        _cursor('["newest",1e999,1]'),  # infinity
        _cursor("[" * 3000 + "]" * 3000),  # nesting that overflows the JSON parser's stack
        "A" * 4000,  # long: refused before it is decoded
    ],
)
@pytest.mark.parametrize("where", ["/api/results", "/api/review", "/api/failed"])
def test_hostile_cursors_are_a_400_or_422(api, where: str, cursor: str) -> None:  # type: ignore[no-untyped-def]
    response = api.get(where, params={"cursor": cursor})
    assert response.status_code in (400, 422), response.text
    assert response.json()["detail"]


@pytest.mark.parametrize("page", ["/browse", "/failed"])
def test_pages_answer_hostile_cursors_with_an_html_error_page(api, page: str) -> None:  # type: ignore[no-untyped-def]
    nested = _cursor("[" * 3000 + "]" * 3000)
    response = api.get(page, params={"cursor": nested}, headers={"Accept": "text/html"})
    assert response.status_code in (400, 422)
    assert response.headers["content-type"].startswith("text/html")
    assert "cursor" in response.text


@pytest.mark.parametrize("since", ["99999999d", "0001-01-01T00:00+01:00", "9999999999999999w"])
def test_since_out_of_range_is_a_422(api, since: str) -> None:  # type: ignore[no-untyped-def]
    response = api.get("/api/results", params={"since": since})
    assert response.status_code == 422, response.text


def test_labels_longer_than_a_folder_name_in_bytes_are_refused(
    settings: Settings, session_factory, api
) -> None:
    (image,) = seed_images(settings, session_factory, [("cat", 0.6)])
    cats = "🐈" * 70  # 70 characters, 280 bytes
    response = api.post("/api/labels", json={"sha256": image.sha256, "label": cats})
    assert response.status_code == 422
    assert "255 bytes" in response.json()["detail"]
    assert not (settings.labeled_path / cats).exists()


def test_look_alike_labels_are_one_class_or_refused(
    settings: Settings, session_factory, api
) -> None:
    first, second = seed_images(settings, session_factory, [("cat", 0.6), ("cat", 0.6)])
    composed, decomposed = "café", unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    assert (
        api.post(
            "/api/labels", json={"sha256": first.sha256, "label": composed, "new_class": True}
        ).status_code
        == 201
    )
    assert (
        api.post("/api/labels", json={"sha256": second.sha256, "label": decomposed}).status_code
        == 201
    )
    classes = [p.name for p in settings.labeled_path.iterdir() if not p.name.startswith(".")]
    assert classes == [composed]
    for lookalike in ("cats\u2215dogs", "a\uff0fb", "a\u2044b"):
        response = api.post("/api/labels", json={"sha256": first.sha256, "label": lookalike})
        assert response.status_code == 422, lookalike
        assert "looks like a path separator" in response.json()["detail"]


def test_a_label_form_on_a_malformed_hash_is_a_422_page(api) -> None:  # type: ignore[no-untyped-def]
    response = api.post(
        "/images/not-a-hash/label", data={"label": "cat"}, headers={"Accept": "text/html"}
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")


def test_json_bodies_over_a_mebibyte_are_refused_before_they_are_read(api) -> None:  # type: ignore[no-untyped-def]
    big = b'{"kind": null, "sha256s": [' + b'"' + b"a" * (2 << 20) + b'"]}'
    response = api.post(
        "/api/failed/retry", content=big, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    chunks = (big[i : i + 65536] for i in range(0, len(big), 65536))  # no Content-Length
    streamed = api.post(
        "/api/failed/retry", content=chunks, headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413


def test_an_ipv6_loopback_host_without_a_port_is_served(api) -> None:  # type: ignore[no-untyped-def]
    assert api.get("/api/status", headers={"Host": "[::1]"}).status_code == 200
    assert api.get("/api/status", headers={"Host": "[::1]:8000"}).status_code == 200
    assert api.get("/api/status", headers={"Host": "evil.example"}).status_code == 400


def test_a_wrong_method_names_every_method_the_path_allows(api) -> None:  # type: ignore[no-untyped-def]
    response = api.request("PUT", "/api/labels")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) >= {"GET", "POST"}


def test_a_second_retrain_request_answers_with_the_queued_run(
    settings: Settings, session_factory, api
) -> None:
    queue = redis.Redis.from_url(settings.redis_url or "")
    try:
        first = api.post("/api/retrain", json={})
        assert first.status_code == 202
        for _ in range(5):
            again = api.post("/api/retrain", json={"force": True})
            assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert queue.llen("train") == 1
        with transaction(session_factory) as session:
            assert len(session.scalars(select(TrainingRun)).all()) == 1
        api.post(f"/api/runs/{first.json()['id']}/cancel")
        assert api.post("/api/retrain", json={}).status_code == 202  # the first one ended
    finally:
        queue.close()


def test_request_bodies_take_exactly_their_fields_and_types(api) -> None:  # type: ignore[no-untyped-def]
    assert api.post("/api/retrain", json={"fresh": 0}).status_code == 422
    assert api.post("/api/retrain", json={"froce": True}).status_code == 422
    assert api.post("/api/failed/retry", json={"kind": "nonsense"}).status_code == 422
