# -*- test-case-name: tests.notifications.test_service -*-
"""Builds the notification subsystem from the raw `notifications` section."""

from __future__ import annotations

from regd.notifications.settings import parse_notifications


def build_notifications(raw, *, reactor, default_journal: str, source_addr: str, run_in_thread=None,
                        metrics=None, authorize_admin=None, deliver: bool = True):
    """
    (service, admin, warnings); service and admin are None when no endpoint
    is configured. The journal gets one thread of its own (SQLite
    connections stay on one thread), unless a runner is given. Deliveries
    run in a thread with a reactor of its own (deliver=True), or not at all
    in this process (deliver=False: another process sharing the journal
    delivers).
    """
    settings, warnings = parse_notifications(raw, default_journal)
    if not settings.endpoints:
        return None, None, warnings
    # Imported only when used: a registry without webhooks stays smaller.
    from twisted.python.threadpool import ThreadPool

    from regd.notifications.admin import NotificationAdmin
    from regd.notifications.httpsink import HTTPSink, make_client
    from regd.notifications.journal import Journal
    from regd.notifications.service import NotificationService
    pool = None
    if run_in_thread is None:
        from twisted.internet.threads import deferToThreadPool
        pool = ThreadPool(minthreads=1, maxthreads=1, name="regd-notifications-journal")

        def run_in_thread(function, *args, **kwargs):
            return deferToThreadPool(reactor, pool, function, *args, **kwargs)

    journal = Journal(settings.journal, run_in_thread, wallclock=reactor.seconds)
    pools = []
    delivery = delivery_journal = None
    sink_reactor = reactor
    if deliver:
        import time

        from regd.notifications.delivery import DeliveryThread
        from twisted.internet.defer import maybeDeferred
        delivery = DeliveryThread(reactor)
        sink_reactor = delivery.reactor
        # Its own connection, used only in the delivery thread (SQLite WAL: readers and one writer at a time).
        delivery_journal = Journal(settings.journal, maybeDeferred, wallclock=time.time)

    def sink_factory(endpoint_settings):
        if deliver:
            # The lean client: deliveries cost little CPU (see rawsink).
            from regd.notifications.httpsink import ReceiverTLSPolicy
            from regd.notifications.rawsink import RawHTTPSink
            policy = None
            if endpoint_settings.ca_file or endpoint_settings.client_certificate:
                policy = ReceiverTLSPolicy(endpoint_settings.ca_file, endpoint_settings.client_certificate,
                                           endpoint_settings.client_key)
            sink = RawHTTPSink(endpoint_settings, sink_reactor, policy)
            pools.append(sink)
            return sink
        client, connection_pool = make_client(sink_reactor, endpoint_settings)
        pools.append(connection_pool)
        return HTTPSink(endpoint_settings, client, sink_reactor)

    from regd.notifications.events import source_address
    service = NotificationService(settings, journal, sink_factory, reactor, source_addr=source_address(source_addr),
                                  on_stop=[lambda: _close_pools(pools)], thread_pool=pool, deliver=deliver,
                                  delivery=delivery, delivery_journal=delivery_journal)
    return service, NotificationAdmin(service, metrics, authorize_admin), warnings


def _close_pools(pools):
    from twisted.internet import defer
    return defer.gatherResults([p.close() if hasattr(p, "close") else p.closeCachedConnections() for p in pools])
