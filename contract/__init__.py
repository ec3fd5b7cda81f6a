"""The bottom of the stack: what every process agrees on, in plain Python and pydantic.

Settings, queue and task names, the message payloads and their JSON form, the records the
roles hand to the ledger, failure kinds, and the small helpers they all share (clock,
backoff, chunking, opening a file that must be a regular file). Nothing here imports a
third-party package other than pydantic, and nothing here imports another package of this
project: every other layer may import it.
"""
