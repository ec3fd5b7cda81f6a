"""The use cases the roles and the CLI share, one home each: sending work and marking it sent
(:mod:`pipeline.enqueue`), rescoring (:mod:`pipeline.rescore`), a person's label with the
retrain it may trigger (:mod:`pipeline.labels`), asking for a training run
(:mod:`pipeline.retrain`). Below the roles (watcher, worker, web) and the CLI, above the ledger
and the broker: it imports ``db``, ``broker``, ``imaging`` and ``contract``, never a role, and
no torch."""
