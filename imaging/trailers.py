"""Whether a file's own bytes say it is unfinished: the formats that end with a marker (JPEG's
end-of-image, PNG's IEND, GIF's trailer) or state their length up front (WebP, BMP). The watcher
asks this of the first and last bytes it streams while hashing (no decode, no second read), so a
file that a writer closes and reopens per chunk is not recorded at each close as a new image
that then fails as corrupt. Formats that say neither (TIFF and the rest) are judged complete.
"""

from __future__ import annotations

#: Bytes of the file's start and end the watcher keeps while hashing.
HEAD_BYTES = 16
TAIL_BYTES = 64

_PNG_END = b"IEND\xaeB`\x82"
# Some writers pad a JPEG after its end-of-image marker, or end it with a newline.
_PADDING = b"\x00\r\n "


def looks_unfinished(head: bytes, tail: bytes, size: int) -> bool:
    """True when the format in ``head`` (the file's first bytes) says more is to come than
    ``tail`` (its last bytes) and ``size`` show."""
    if head.startswith(b"\xff\xd8\xff"):  # JPEG: ends with FF D9 (end of image)
        return not tail.rstrip(_PADDING).endswith(b"\xff\xd9")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return not tail.rstrip(_PADDING).endswith(_PNG_END)
    if head.startswith((b"GIF87a", b"GIF89a")):
        return not tail.rstrip(_PADDING).endswith(b";")
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP" and len(head) >= 12:
        return size < int.from_bytes(head[4:8], "little") + 8
    if head.startswith(b"BM") and len(head) >= 6:
        declared = int.from_bytes(head[2:6], "little")
        return 0 < size < declared  # some writers leave the size 0
    return False
