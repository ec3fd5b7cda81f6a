"""The learning loop: learn from ``labeled/<class>/`` folders, gate, promote.

Importing this package loads no model and touches no CUDA; :mod:`worker.training.run` does the
work and :mod:`worker.training.task` binds it to Celery.
"""

from __future__ import annotations

from worker.training.dataset import TrainingRefused

__all__ = ["TrainingRefused"]
