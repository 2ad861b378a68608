# -*- test-case-name: tests.oci.test_reference -*-
"""
The name and tag grammar of the distribution spec; the regexes live here only.

A name that passes L{validate_name} has no empty, '.' or '..' component and
no component starting with '_', so it can never address a path outside its
repository directory nor collide with the registry's own '_' directories.
"""

from __future__ import annotations

import re

from regd.oci.errors import NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_PATTERN = rf"{_COMPONENT}(?:/{_COMPONENT})*"
TAG_PATTERN = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"

_NAME = re.compile(rf"^{NAME_PATTERN}$")
_TAG = re.compile(rf"^{TAG_PATTERN}$")

MAX_NAME_LENGTH = 255


def is_valid_name(name: str) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and bool(_NAME.match(name))


def validate_name(name: str) -> str:
    if not is_valid_name(name):
        raise NameInvalid(detail={"name": str(name)[:MAX_NAME_LENGTH + 1]})
    return name


def is_valid_tag(tag: str) -> bool:
    return isinstance(tag, str) and bool(_TAG.match(tag))


def validate_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise TagInvalid("invalid tag", detail={"tag": str(tag)[:129]})
    return tag
