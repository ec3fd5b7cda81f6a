"""Module-level app for the stock Celery CLI: ``celery -A worker.celery_app worker``.

Reads Settings from the environment here, once; loads no model (that happens lazily in the
process that runs the first task).
"""

from contract.settings import Settings
from worker.tasks import create_worker_app

app = create_worker_app(Settings())
