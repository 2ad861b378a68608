# -*- test-case-name: tests.notifications.test_service -*-
"""Builds the notification subsystem from the raw `notifications` section."""

from __future__ import annotations

from regd.notifications.settings import parse_notifications

SERVING_CHECKPOINT_PAGES = 20_000  # about 80 MiB of WAL


def build_notifications(raw, *, reactor, default_journal: str, source_addr: str, run_in_thread=None,
                        metrics=None, authorize_admin=None, deliver: bool = True, log_settings=None):
    """
    (service, admin, warnings); service and admin are None when no endpoint
    is configured. The journal gets one thread of its own (SQLite
    connections stay on one thread), unless a runner is given. Deliveries
    run in a process of their own that this one starts (deliver=True; it
    logs with C{log_settings}: level, formatter, fields), or not from here
    at all (deliver=False: another process sharing the journal delivers).
    """
    settings, warnings = parse_notifications(raw, default_journal)
    if not settings.endpoints:
        return None, None, warnings
    # Imported only when used: a registry without webhooks stays smaller.
    from twisted.python.threadpool import ThreadPool

    from regd.notifications.admin import NotificationAdmin
    from regd.notifications.journal import Journal
    from regd.notifications.service import NotificationService
    pool = None
    if run_in_thread is None:
        from twisted.internet.threads import deferToThreadPool
        pool = ThreadPool(minthreads=1, maxthreads=1, name="regd-notifications-journal")

        def run_in_thread(function, *args, **kwargs):
            return deferToThreadPool(reactor, pool, function, *args, **kwargs)

    # The delivery process's commits copy the WAL back into the database; ours only when it grew far (that
    # process down a long time), so that requests do not wait on that copy.
    # Appends write event rows only; the delivery process (this one's or worker 0's) writes the delivery rows.
    journal = Journal(settings.journal, run_in_thread, wallclock=reactor.seconds,
                      checkpoint_pages=SERVING_CHECKPOINT_PAGES, fan_out=False)
    delivery = None
    if deliver:
        from regd.notifications.process import DeliveryProcess
        delivery = DeliveryProcess(reactor, raw, settings.journal, log_settings)

    def sink_factory(endpoint_settings):
        return None  # no endpoint delivers from this process

    from regd.notifications.events import source_address
    service = NotificationService(settings, journal, sink_factory, reactor, source_addr=source_address(source_addr),
                                  thread_pool=pool, deliver=deliver, delivery=delivery)
    return service, NotificationAdmin(service, metrics, authorize_admin), warnings

