"""Benchmark harness for inbox-classifier (issue #4): ceiling vs pipeline vs naive baseline.

Run ``python -m bench.run --images 600`` (see ``bench/run.py``).
"""
