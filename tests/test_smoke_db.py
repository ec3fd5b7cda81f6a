from contract.messages import WorkItem
from contract.records import Classified, SeenFile
from db.engine import transaction
from db.ledger import record_files, save_results
from db.models import Image, ImageStatus
from db.queries import ResultFilter, results
from db.versions import ensure_base_model


def test_record_dedupes_content_and_save_is_idempotent(session_factory) -> None:
    a = SeenFile(path="/in/a.jpg", sha256="a" * 64, size=10, mtime_ns=1)
    twin = SeenFile(path="/in/copy-of-a.jpg", sha256="a" * 64, size=10, mtime_ns=2)
    with transaction(session_factory) as s:
        todo = record_files(s, [a, twin])
        base = ensure_base_model(s, "resnet18", "none", ["x", "y"])
    assert todo == [WorkItem(path="/in/a.jpg", sha256="a" * 64)]
    result = Classified(
        sha256="a" * 64, label="x", confidence=0.9, topk=[{"label": "x", "confidence": 0.9}]
    )
    for _ in range(2):  # a redelivered batch adds nothing
        with transaction(session_factory) as s:
            save_results(s, base.id, [result])
    with transaction(session_factory) as s:
        rows = s.execute(results(ResultFilter(label="x"))).all()
        assert {p.path for _, p, _ in rows} == {"/in/a.jpg", "/in/copy-of-a.jpg"}
        image = rows[0][0]
        assert image.status == ImageStatus.DONE and image.model_version_id == base.id
        assert s.query(Image).count() == 1
