"""After a promotion: rescore the unreviewed rows the old model was least sure of, so the
review queue and the results show the better model without anyone asking for it. Rows a
person labeled are left alone (their label is the truth), and older predictions stay in
``predictions`` as history."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from broker.app import make_celery
from contract.settings import Settings
from pipeline.rescore import Selection, rescore

log = logging.getLogger(__name__)


def backfill(settings: Settings, sessions: sessionmaker[Session], version_id: int) -> int:
    """Queue the unreviewed rows below ``backfill_below_confidence`` (at most
    ``backfill_limit``, least confident first) for the new version. Returns how many; never
    raises: a backfill that cannot be sent is left to the reconciler."""
    if settings.backfill_limit == 0 or not settings.redis_url:
        return 0
    which = Selection(
        version_id,
        below_confidence=settings.backfill_below_confidence,
        unreviewed=True,
        limit=settings.backfill_limit,
    )
    app = make_celery(settings)
    try:
        items, _ = rescore(app, sessions, which, settings.files_per_message)
    except Exception:
        log.exception("the backfill after promoting version %d failed", version_id)
        return 0
    finally:
        app.close()
    log.info("backfill: %d unreviewed image(s) queued for version %d", len(items), version_id)
    return len(items)
