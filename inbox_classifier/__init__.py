"""inbox-classifier: drop images into a folder, get labels and confidences in SQL."""

__version__ = "0.1.0"
