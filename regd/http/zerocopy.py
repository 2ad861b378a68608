# -*- test-case-name: tests.http.test_zerocopy -*-
"""
Zero-copy blob bodies: os.sendfile from the blob's descriptor to the socket.

Only when the connection is plain TCP (no TLS layer anywhere in the chain of
protocol wrappers): then the kernel can move page-cache pages to the socket
and no byte of the layer passes through Python.

How it fits Twisted: the response head goes out through the request as
usual. Then, like twisted.web's own switch to HTTP/2, the HTTP channel is
unregistered as the TCP transport's producer and a pull producer takes its
place. The transport calls a pull producer's resumeProducing only once its
own buffer is empty and the socket is writable, so each call sends what the
socket accepts with one sendfile(2), then asks to be called when it is
writable again (startWriting). When every byte is out, the channel is put
back and the request finished. Memory per download is constant; the socket
buffer is the only flow control needed.

A blob cannot change under a download: the descriptor keeps its inode even
if garbage collection unlinks or replaces the file. If the file gets shorter
than promised (truncated in place), the connection is cut, so a client never
takes a short or mixed body for a whole one.
"""

from __future__ import annotations

import errno
import os
import sys

from twisted.internet import defer, tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.protocols import policies
from zope.interface import implementer

log = Logger()

# Upper bound for one sendfile(2) call; the socket buffer usually takes less.
MAX_SEND = 16 * 1024 * 1024


def _is_tls(transport) -> bool:
    """
    Whether C{transport} is Twisted's TLS layer. Looked up, not imported: a
    process without TLS configured never loads it (regd.daemon.memory), and
    then no connection can be TLS.
    """
    tls = sys.modules.get("twisted.protocols.tls")
    return tls is not None and isinstance(transport, tls.TLSMemoryBIOProtocol)


def plain_tcp_transport(request):
    """The tcp.Connection under C{request} if no TLS wraps it, else None."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    while isinstance(transport, policies.ProtocolWrapper):
        if _is_tls(transport):
            return None
        transport = transport.transport
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    if transport.disconnected or transport.disconnecting or transport.producer is None:
        return None
    return transport


class ProducerSlot:
    """
    A TCP transport's producer slot, lent to a pull producer for one body
    (L{SendfileProducer}, L{regd.http.tlssend.TLSFileSender}) and given back.

    The transport calls a pull producer's resumeProducing only once its own
    buffer is empty and the socket writable, which is how the borrower
    learns that the response head is on the wire and when to send more.
    Under TLS what held the slot is the TLS layer's wrapper of the channel,
    never the channel itself, and the TLS sender restores reading itself.
    """

    def __init__(self, transport):
        self.transport = transport
        self._borrower = None
        self._saved = None

    def take(self, borrower) -> None:
        transport = self.transport
        self._borrower, self._saved = borrower, (transport.producer, transport.streamingProducer)
        transport.unregisterProducer()
        # registerProducer calls resumeProducing at once, with the head still buffered; the transport
        # calls it again once the head is on the wire.
        transport.registerProducer(borrower, False)

    def give_back(self) -> None:
        """Put back what held the slot before, unless the connection is gone; once only."""
        transport, borrower, saved = self.transport, self._borrower, self._saved
        self._borrower = self._saved = None
        if saved is None or transport.producer is not borrower:
            return
        transport.unregisterProducer()
        producer, streaming = saved
        if producer is not None and not transport.disconnected:
            transport.registerProducer(producer, streaming)
            # Nothing is buffered any more: an HTTP channel the transport paused (its buffer was full
            # when the slot was taken) would otherwise wait for a resume that never comes.
            if getattr(producer, "_waitingForTransport", False):
                producer.resumeProducing()


@implementer(IPullProducer)
class SendfileProducer:
    """
    Sends C{length} bytes from C{fd} at C{offset} as the body of C{request}
    (whose headers must already be set). C{done} fires with None once every
    byte was handed to the kernel, or fails if the client went away or the
    file was cut short (the connection is then aborted).
    """

    def __init__(self, request, transport, fd: int, offset: int, length: int):
        self._request = request
        self._transport = transport
        self._fd = fd
        self._offset = offset
        self._remaining = length
        self._socket = transport.fileno()
        self._slot = ProducerSlot(transport)
        self._primed = False
        self.done = defer.Deferred()

    def start(self):
        request, transport = self._request, self._transport
        request.write(b"")  # the response head, into the transport's buffer
        if transport.disconnected or getattr(request, "_disconnected", False):
            self._fail(ConnectionDone("client went away before the body"))
            return self.done
        self._slot.take(self)
        self._primed = True
        return self.done

    def resumeProducing(self):
        if self.done.called:
            return
        if not self._primed:
            self._transport.startWriting()
            return
        if self._remaining <= 0:
            self._finish()
            return
        try:
            sent = os.sendfile(self._socket, self._fd, self._offset, min(self._remaining, MAX_SEND))
        except (BlockingIOError, InterruptedError):
            self._transport.startWriting()
            return
        except OSError as e:
            self._abort(ConnectionLost(f"sendfile: {os.strerror(e.errno or errno.EIO)}"))
            return
        if sent == 0:
            self._abort(IOError("blob shorter than its stated size"))
            return
        self._offset += sent
        self._remaining -= sent
        self._request.sentLength += sent
        if self._remaining <= 0:
            self._finish()
        else:
            self._transport.startWriting()

    def stopProducing(self):
        """The transport lost its connection (client hang-up)."""
        self._fail(ConnectionDone("client went away mid-body"))

    def _finish(self):
        self._slot.give_back()
        if not self.done.called:
            self.done.callback(None)

    def _abort(self, why: Exception):
        log.info("zero-copy download cut: {why}", why=why)
        self._slot.give_back()
        self._fail(why)
        self._transport.abortConnection()

    def _fail(self, why: Exception):
        if not self.done.called:
            self.done.errback(why)


# -- TLS bulk writes ----------------------------------------------------------

TLS_WRITE = 256 * 1024


def tls_layer(request):
    """The TLSMemoryBIOProtocol under C{request}, if any."""
    transport = getattr(getattr(request, "channel", None), "transport", None)
    while isinstance(transport, policies.ProtocolWrapper):
        if _is_tls(transport):
            return transport
        transport = transport.transport
    return None


BULK_SEND = 4 * 1024 * 1024  # bytes per send(2) for bodies that pass through Python on plain TCP


def bulk_writes(request) -> None:
    """
    Let a body that passes through Python (S3, memory storage, small TLS
    bodies) go out in as few calls as the socket allows. On plain TCP,
    Twisted sends at most 128 KiB per writable event: a 1 GiB blob read
    from S3 took 8,200 send(2) calls, each a trip through the reactor, and
    they cost about a quarter of regd's CPU for the pull. The socket takes
    what its buffer has room for either way; only this connection changes.
    """
    transport = plain_tcp_transport(request)
    if transport is not None:
        transport.SEND_LIMIT = max(transport.SEND_LIMIT, BULK_SEND)
    else:
        bulk_tls_writes(request)


def bulk_tls_writes(request) -> None:
    """
    Make this connection's TLS layer encrypt large writes in 256 KiB calls.

    twisted.protocols.tls hands OpenSSL 16 KiB at a time (a bytes slice
    each) and reads 32 KiB of ciphertext back per call: a dozen Python-level
    calls and three copies per record. OpenSSL itself splits a large
    SSL_write into records, and the memory BIO never blocks, so one call per
    256 KiB plus draining the BIO produces the same records with far fewer
    trips through Python. Only this connection's protocol instance changes.
    """
    tls = tls_layer(request)
    if tls is None or getattr(tls, "_regd_bulk", False):
        return
    tls._regd_bulk = True
    tls._write = _bulk_write.__get__(tls)
    # The socket under it may then take a whole encrypted piece per writable
    # event (Twisted sends at most 128 KiB per event by default).
    socket_transport = tls.transport
    while isinstance(socket_transport, policies.ProtocolWrapper):
        socket_transport = socket_transport.transport
    if isinstance(socket_transport, tcp.Connection):
        socket_transport.SEND_LIMIT = max(socket_transport.SEND_LIMIT, 4 * TLS_WRITE)


def _bulk_write(self, data):
    from OpenSSL.SSL import Error, WantReadError
    from twisted.python.failure import Failure

    if self._lostTLSConnection:
        return
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            done += self._tlsConnection.send(view[done:done + TLS_WRITE])
        except WantReadError:
            self._bufferedWrite(bytes(view[done:]))
            break
        except Error:
            self._tlsShutdownFinished(Failure())
            break
        while True:
            try:
                encrypted = self._tlsConnection.bio_read(TLS_WRITE + 8192)
            except WantReadError:
                break
            self.transport.write(encrypted)
