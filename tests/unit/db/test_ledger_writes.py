from contract.filters import ResultFilters
from contract.messages import WorkItem
from contract.records import Classified, SeenFile
from db.batch_write import save_results
from db.engine import transaction
from db.ledger import record_files
from db.models import Image, ImageStatus
from db.queries import results
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
        rows = s.execute(results(ResultFilters(label="x"))).all()
        assert {r.path for r in rows} == {"/in/a.jpg", "/in/copy-of-a.jpg"}
        assert rows[0].status == ImageStatus.DONE and rows[0].version_name == base.name
        assert s.query(Image).count() == 1
