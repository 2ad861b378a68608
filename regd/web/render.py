# -*- test-case-name: tests.web.test_pages -*-
"""
Templates: jinja2 with autoescaping on for every template, so any string
that came from a push (names, tags, annotations, labels, descriptions) is
HTML-escaped where it is written; nothing is ever marked safe. Undefined
names are errors, not silently empty.
"""

from __future__ import annotations

import datetime
import os
from urllib.parse import quote, urlencode

import jinja2

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
STATIC = os.path.join(os.path.dirname(__file__), "static")


def human_size(size) -> str:
    if not isinstance(size, int) or size < 0:
        return "–"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def when(seconds) -> str:
    if seconds is None:
        return "–"
    try:
        moment = datetime.datetime.fromtimestamp(float(seconds), datetime.timezone.utc)
    except (OverflowError, ValueError, OSError):
        return "–"
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def short_digest(digest) -> str:
    text = str(digest)
    algorithm, _, hex_part = text.partition(":")
    return f"{algorithm}:{hex_part[:12]}" if hex_part else text[:19]


def path_quote(text) -> str:
    return quote(str(text), safe="/")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template, whatever its file name
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters.update(size=human_size, when=when, short=short_digest, pq=path_quote, qs=urlencode)
    return env
