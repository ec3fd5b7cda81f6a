"""The mistakes a person cannot see, end to end on real parts: a real training run scores every
labeled image and puts the flipped labels first; a person's decisions move real files and are
undone; near-twins of training images are left out of the held-out score; the review queue
shows one copy of a picture at a time."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from contract.records import Classified, SeenFile
from contract.settings import Settings
from db import browse
from db.batch_write import save_results
from db.engine import transaction
from db.ledger import record_files
from db.models import LabeledImage, RunStatus
from db.versions import ensure_base_model
from imaging.perceptual import file_phash
from inbox_classifier.cli import main
from pipeline import near_duplicates
from tests.helpers.images import photo_like, re_saved
from tests.helpers.training import COLOURS, make_labeled, training_settings, write_class
from tests.helpers.web import client, topk
from worker.training.dataset import scan_labeled
from worker.training.leaks import guard_holdout
from worker.training.run import run_training


def _flip(root: Path, source: str, target: str, count: int) -> list[str]:
    """Move ``count`` images of class ``source`` into ``target``'s folder: wrong labels."""
    moved = []
    for path in sorted((root / source).iterdir())[:count]:
        destination = root / target / f"flipped-{path.name}"
        shutil.move(path, destination)
        moved.append(f"{target}/{destination.name}")
    return moved


def test_a_run_ranks_the_flipped_labels_first_and_a_person_decides_on_them(
    settings: Settings, session_factory
) -> None:
    s = training_settings(settings)
    make_labeled(s.labeled_path, per_class=30)
    flipped = _flip(s.labeled_path, "red", "blue", 2) + _flip(s.labeled_path, "green", "red", 2)
    out = run_training(s, session_factory)
    assert out.status == RunStatus.PROMOTED, out.message
    assert out.report is not None
    scored = out.report["suspects"]
    assert scored["images"] == 90 and "cross-fitted" in scored["method"]

    api = client(s)
    page = api.get("/api/suspects", params={"limit": 8}).json()
    assert page["run_id"] == out.report["run_id"] and page["remaining"] == 90
    top = [item["path"] for item in page["items"]]
    assert set(flipped) <= set(top[:6]), top
    by_path = {item["path"]: item for item in page["items"]}
    assert by_path[flipped[0]]["suggested"] == "red"  # a red image filed under blue
    cli = CliRunner().invoke(
        main, ["suspects", "--format", "json", "--limit", "4", "--database-url", s.db_url]
    )
    assert cli.exit_code == 0, cli.output
    assert {row["path"] for row in json.loads(cli.stdout)} <= set(top[:6])

    # Relabel: the file moves to the suggested class; undo puts it back.
    relabel = by_path[flipped[0]]
    done = api.post(
        f"/api/suspects/{relabel['sha256']}", json={"decision": "relabel", "new_label": "red"}
    )
    assert done.status_code == 200, done.text
    # red/ holds a flipped-img_0000.png already (a green one): the move takes the next name.
    moved_to = done.json()["path"]
    assert moved_to == "red/flipped-img_0000-2.png", moved_to
    assert (s.labeled_path / moved_to).is_file()
    assert (s.labeled_path / "red" / "flipped-img_0000.png").is_file()
    assert not (s.labeled_path / flipped[0]).exists()
    again = api.post(f"/api/suspects/{relabel['sha256']}", json={"decision": "keep"})
    assert again.status_code == 409 and "undo" in again.json()["detail"]
    assert api.delete(f"/api/suspects/{relabel['sha256']}").status_code == 200
    assert (s.labeled_path / flipped[0]).is_file()
    assert not (s.labeled_path / moved_to).exists()

    # Remove: out of labeled/ into the data dir, never deleted; then keep another.
    removed = by_path[flipped[1]]
    assert api.post(f"/api/suspects/{removed['sha256']}", json={"decision": "remove"}).is_success
    assert not (s.labeled_path / flipped[1]).exists()
    assert (s.data_dir / "removed" / "blue" / Path(flipped[1]).name).is_file()
    kept = by_path[flipped[2]]
    assert api.post(f"/api/suspects/{kept['sha256']}", json={"decision": "keep"}).is_success
    left = api.get("/api/suspects", params={"limit": 100}).json()
    assert left["remaining"] == 88
    assert {removed["sha256"], kept["sha256"]}.isdisjoint(i["sha256"] for i in left["items"])

    # Bad requests get a message a person can act on.
    bad = api.post(f"/api/suspects/{'0' * 64}", json={"decision": "keep"})
    assert bad.status_code == 404 and "no suspect" in bad.json()["detail"]
    unknown = api.post(
        f"/api/suspects/{by_path[flipped[3]]['sha256']}",
        json={"decision": "relabel", "new_label": "purple"},
    )
    assert unknown.status_code == 422 and "not a known class" in unknown.json()["detail"]
    picture = api.get(f"/api/suspects/{by_path[flipped[3]]['sha256']}/thumbnail")
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"


def test_held_out_near_twins_of_training_images_are_left_out(settings: Settings) -> None:
    s = training_settings(settings, holdout_fraction=0.3)
    pairs: dict[str, str] = {}  # copy's content hash -> original's
    for c, name in enumerate(["a", "b"]):
        for i in range(40):
            image = photo_like(100 * c + i, (96, 72))
            original = s.labeled_path / name / f"p{i:03d}.png"
            original.parent.mkdir(parents=True, exist_ok=True)
            image.save(original)
            if i < 20:
                data = re_saved(image)
                (s.labeled_path / name / f"p{i:03d}-copy.jpg").write_bytes(data)
                pairs[hashlib.sha256(data).hexdigest()] = hashlib.sha256(
                    original.read_bytes()
                ).hexdigest()
    labeled = scan_labeled(
        s.labeled_path,
        val_fraction=0.2,
        holdout_fraction=0.3,
        min_images_per_class=5,
        max_pixels=s.max_image_pixels,
    )
    train = {x.sha256 for x in labeled.train}
    twins = {**pairs, **{v: k for k, v in pairs.items()}}
    expected = {x.sha256 for x in labeled.holdout if twins.get(x.sha256) in train}
    assert expected, "the split put no pair across train and held-out: pick other seeds"
    kept, report = guard_holdout(labeled)
    assert report is not None
    assert report["held_out_left_out"] == len(expected), report
    assert {x.sha256 for x in kept} == {x.sha256 for x in labeled.holdout} - expected


def test_the_review_queue_shows_one_copy_of_a_picture_at_a_time(
    settings: Settings, session_factory
) -> None:
    """Five copies of one picture are the model's least certain images; the first screen of
    the queue holds one of them, and the next once it is labeled."""
    files: list[tuple[Path, float]] = []
    picture = photo_like(5, (160, 120))
    for i in range(5):
        path = settings.inbox / f"copy-{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(re_saved(picture, quality=60 + 5 * i))
        files.append((path, 0.51 + i * 0.001))  # the least certain of all
    for i in range(40):
        path = settings.inbox / f"other-{i:02d}.png"
        photo_like(1000 + i, (160, 120)).save(path)
        files.append((path, 0.6 + i * 0.005))
    with transaction(session_factory) as session:
        seen = [
            SeenFile(
                str(p),
                hashlib.sha256(p.read_bytes()).hexdigest(),
                p.stat().st_size,
                p.stat().st_mtime_ns,
            )
            for p, _ in files
        ]
        record_files(session, seen)
        base = ensure_base_model(session, "resnet18", "none", ["cat", "dog"])
        save_results(
            session,
            base.id,
            [
                Classified(
                    f.sha256,
                    "cat",
                    c,
                    topk("cat", c),
                    phash=file_phash(p.read_bytes(), settings.max_image_pixels),
                )
                for f, (p, c) in zip(seen, files, strict=True)
            ],
        )
    copies = {f.sha256 for f in seen[:5]}
    result = near_duplicates.refresh(settings, session_factory)
    assert [set(g) for g in result.groups] == [copies], result.threshold
    with transaction(session_factory) as session:
        first = browse.review_page(session, None, 20).items
    shown = [r.sha256 for r in first]
    assert len(set(shown) & copies) == 1 and len(shown) == 20
    api = client(settings)
    labeled = api.post("/api/labels", json={"sha256": shown[0], "label": "cat"})
    assert labeled.status_code == 201, labeled.text
    with transaction(session_factory) as session:
        after = [r.sha256 for r in browse.review_page(session, None, 20).items]
    assert len(set(after) & copies) == 1 and shown[0] not in after
    twins = api.get(f"/api/images/{shown[0]}/similar").json()
    assert {t["sha256"] for t in twins["items"]} == copies - {shown[0]}
    groups = api.get("/api/results", params={"near_duplicates": "true", "limit": 50}).json()
    assert {r["sha256"] for r in groups["items"]} == copies
    with transaction(session_factory) as session:
        assert session.scalars(select(LabeledImage)).first() is None


def test_a_run_without_flips_still_scores_and_keeps_its_rows(
    settings: Settings, session_factory
) -> None:
    s = training_settings(settings)
    for name in ("red", "blue"):
        write_class(s.labeled_path / name, COLOURS[name], 12)
    out = run_training(s, session_factory)
    assert out.status == RunStatus.PROMOTED, out.message
    with transaction(session_factory) as session:
        rows = session.scalars(select(LabeledImage)).all()
    assert len(rows) == 24 and all(r.score is not None and r.phash for r in rows)
    assert {r.split for r in rows} <= {"train", "val", "holdout"}


def test_a_ledger_over_the_pass_limit_is_grouped_over_passes(
    settings: Settings, session_factory, monkeypatch
) -> None:
    """Over MAX_PASS_IMAGES a pass compares only the images no pass compared yet, at most a
    full pass at the limit's work; passes catch up to the groups one full pass finds, and an
    image recorded early but classified late is compared too."""
    monkeypatch.setattr(near_duplicates, "MAX_PASS_IMAGES", 20)  # 200 comparisons a pass
    rng = random.Random(7)
    originals = [rng.randbytes(32) for _ in range(20)]

    def copy(of: bytes, flips: int) -> bytes:
        value = bytearray(of)
        for bit in rng.sample(range(255), flips):
            value[bit // 8] ^= 1 << (bit % 8)
        return bytes(value)

    hashes = originals + [copy(originals[i], 3) for i in (0, 0, 9, 9, 5, 9)]  # 26 images
    shas = [hashlib.sha256(h).hexdigest() for h in hashes]
    late = 24  # a copy of 5: recorded before copy 25, classified after the passes caught up
    with transaction(session_factory) as session:
        record_files(session, [SeenFile(f"/in/{i}.jpg", sha, 1, 1) for i, sha in enumerate(shas)])
        base = ensure_base_model(session, "resnet18", "none", ["cat"])
        save_results(
            session,
            base.id,
            [
                Classified(sha, "cat", 0.9, topk("cat", 0.9), phash=h)
                for i, (sha, h) in enumerate(zip(shas, hashes, strict=True))
                if i != late
            ],
        )
    passes = []
    while not passes or passes[-1].pending:
        passes.append(near_duplicates.refresh(settings, session_factory))
        assert passes[-1].images - (passes[-2].images if len(passes) > 1 else 0) <= 8
    assert len(passes) >= 3, [p.images for p in passes]
    want = [{shas[0], shas[20], shas[21]}, {shas[9], shas[22], shas[23], shas[25]}]
    assert [set(g) for g in passes[-1].groups] == want

    with transaction(session_factory) as session:  # the late one, its id below a compared one
        save_results(session, base.id, [Classified(shas[late], "cat", 0.9, [], phash=hashes[late])])
    caught_up = near_duplicates.refresh_if_stale(settings, session_factory)
    assert caught_up is not None and caught_up.pending == 0
    want.insert(1, {shas[5], shas[late]})
    assert [set(g) for g in caught_up.groups] == want
    assert near_duplicates.refresh_if_stale(settings, session_factory) is None  # current
