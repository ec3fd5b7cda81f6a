"""The classify worker's machinery: dynamic batching, the decode threads, the
writer thread's group commits, the model a worker holds and leases to its streams, metrics,
the reconciler. It stands on worker.model and never imports worker.training."""
