# -*- test-case-name: tests.notifications.test_delivery -*-
"""
What regd and its delivery process say to each other, as AMP commands over
a pipe pair (see L{regd.notifications.process} and
L{regd.notifications.deliverer}). Events never travel here: the journal is
the only channel for them. These commands carry the settings at start, a
wake-up after journal commits, dead letters to send again, figures
for /debug/notifications and /metrics, and the request to drain and stop.
"""

from __future__ import annotations

from twisted.protocols import amp


class Start(amp.Command):
    """Parent to child: the raw `notifications` section and the log settings, both as JSON."""

    arguments = [(b"notifications", amp.Unicode()), (b"journal", amp.Unicode()), (b"log", amp.Unicode())]
    response: list = []


class Wake(amp.Command):
    """Parent to child: something was journaled; read the journal now rather than at the next poll."""

    arguments: list = []
    requiresAnswer = False


class Requeue(amp.Command):
    """Parent to child: these journal rows (dead letters revived by a replay) are pending again."""

    arguments = [(b"endpoint", amp.Unicode()), (b"seqs", amp.ListOf(amp.Integer()))]
    response = [(b"queued", amp.Integer())]


class Figures(amp.Command):
    """Child to parent: every endpoint's counters, as JSON (sent when they change, a few times a second)."""

    arguments = [(b"figures", amp.Unicode())]
    requiresAnswer = False


class Report(amp.Command):
    """Parent to child: every endpoint's figures now (for /debug/notifications), one JSON text each."""

    arguments: list = []
    response = [(b"figures", amp.ListOf(amp.Unicode()))]


class Stop(amp.Command):
    """Parent to child: stop reading the journal, deliver what can be within the drain time, close."""

    arguments: list = []
    response: list = []


REQUEUE_CHUNK = 2000  # seqs per Requeue (an AMP value holds at most 64 KiB)
