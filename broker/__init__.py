"""The message broker side of the contract: the Celery app every process builds from Settings,
sending classify and retrain messages, and what Redis says about the queues. Importing it loads
no model and touches no CUDA: producers (the watcher, the CLI, the web app) use it to send.
"""
