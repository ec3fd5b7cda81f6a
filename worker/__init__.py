"""Celery workers: batched inference on the `classify` queue, retraining on `train`."""
