"""
Random ids and names from a pooled random source.

Each os.urandom call (like each uuid.uuid4) is a system call that lets go
of the interpreter lock, and taking the lock back can mean waiting for a
busy thread: on the reactor thread (an event or request id per request) and
on the storage threads (temp and note names, several per push). Reading the
random bytes C{batch} ids at a time makes that rare.
"""

from __future__ import annotations

import os
import threading
import uuid


class RandomIds:
    """
    Version 4 UUIDs as text (calling the object), or 32 random hex digits
    (L{hex}), taken from random bytes read C{batch} ids at a time. Safe to
    use from several threads at once; a forked child never repeats ids of
    its parent.
    """

    def __init__(self, batch: int = 256):
        self._batch = batch
        self._pool = b""
        self._next = 0
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._pool, self._next = b"", 0
        self._lock = threading.Lock()  # another thread may have held it when the parent forked

    def _take(self) -> bytes:
        with self._lock:
            if self._next >= len(self._pool):
                self._pool, self._next = os.urandom(16 * self._batch), 0
            start = self._next
            self._next = start + 16
            return self._pool[start:start + 16]

    def __call__(self) -> str:
        return str(uuid.UUID(bytes=self._take(), version=4))

    def hex(self) -> str:
        """32 random hex digits (128 bits): unique names for temp files, notes and request ids."""
        return self._take().hex()


random_ids = RandomIds()
