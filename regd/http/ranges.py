# -*- test-case-name: tests.http.test_ranges -*-
"""Range and Content-Range parsing (pure)."""

from __future__ import annotations

import re

from regd.oci.errors import RangeInvalid

_BYTES_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_UPLOAD_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


class Unsatisfiable(Exception):
    """The Range cannot be served from an object of this size (416)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """
    Parse a GET Range header into (start, length) for an object of C{size}
    bytes. None means serve the whole object: no header, a malformed one, or
    several ranges (allowed by RFC 9110, which lets a server ignore Range).
    """
    if not header:
        return None
    match = _BYTES_RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        start = max(size - suffix, 0)
        return start, size - start
    start = int(first)
    if start >= size:
        raise Unsatisfiable()
    end = size - 1 if last == "" else min(int(last), size - 1)
    if end < start:
        return None
    return start, end - start + 1


def content_range(start: int, length: int, size: int) -> str:
    return f"bytes {start}-{start + length - 1}/{size}"


def parse_upload_range(header: str | None) -> tuple[int, int] | None:
    """
    Parse a PATCH Content-Range ("start-end", inclusive, as docker sends it;
    "bytes start-end/total" is also taken). Raises 416 on nonsense.
    """
    if header is None:
        return None
    match = _UPLOAD_RANGE.match(header.strip())
    if match is None:
        raise RangeInvalid(detail={"Content-Range": header[:100]})
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise RangeInvalid(detail={"Content-Range": header[:100]})
    return start, end
