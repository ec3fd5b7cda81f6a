"""Queue and task names. Inference never waits behind training: they are separate queues,
served by separate worker processes."""

from __future__ import annotations

CLASSIFY_QUEUE = "classify"
TRAIN_QUEUE = "train"

TASK_CLASSIFY = "inbox_classifier.classify"
TASK_RETRAIN = "inbox_classifier.retrain"
TASK_RECONCILE = "inbox_classifier.reconcile"
