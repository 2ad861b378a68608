# -*- test-case-name: tests.http.test_tlssend -*-
"""
Big blob bodies over TLS, encrypted straight onto the socket from a thread.

Twisted's TLS layer runs OpenSSL over memory BIOs on the reactor thread:
every byte of a download is read into Python, copied into OpenSSL,
encrypted into the send BIO, copied back out into Python bytes and written
to the socket, while the interpreter lock is held between those calls.
This machine has no kernel TLS, so sendfile(2) over TLS is impossible; the
next best thing is what a C server does: read the file into one buffer and
let OpenSSL encrypt it onto the socket itself. Two copies instead of four,
and no Python per record.

How, for one response body (the head goes out through twisted.web first):

1. Like L{regd.http.zerocopy}, a pull producer takes the TCP transport's
   producer slot (L{regd.http.zerocopy.ProducerSlot}), so we learn when the head's ciphertext is on the wire and
   the transport's buffer is empty.
2. The connection is parked: the TLS protocol's OpenSSL object is swapped
   for L{_Parked}, a stand-in that keeps Twisted's hands off it (reads,
   writes, shutdowns and timeouts meet the stand-in, which queues or records
   them), and the transport stops reading.
3. The SSL object's memory BIOs are replaced by fresh memory BIOs of the
   sender's (SSL_set_bio frees the replaced ones, so they must be empty:
   the send BIO always is once Twisted flushed it, and any unread
   ciphertext in the receive BIO is read out first and replayed later),
   and the connection's descriptor is duplicated, which keeps the socket,
   and its number, ours even if Twisted closes its own.
4. A thread loops: pread 192 KiB into one reused buffer, SSL_write it into
   the send BIO 64 KiB at a time, BIO_read the ciphertext into the part of
   that same buffer already encrypted, and write the piece's ciphertext to
   the socket in one write(2) (poll() while the socket is full, resuming
   partial writes). cffi and os.write release the interpreter lock. A
   socket BIO made OpenSSL issue one write(2) per 16 KiB record, and on
   loopback each one also runs the receiver's TCP path on our CPU; one
   write per piece took the server's CPU per GiB of a TLS pull from
   1.05-1.31 s to 0.85-1.00 s in bench runs, despite the copy out of
   the BIO. A client that hangs up makes the write fail; an abort or lost
   connection seen by the reactor shuts the duplicate down, which wakes it.
5. Back on the reactor, fresh memory BIOs go in (pyOpenSSL's Connection is
   pointed at them), the real OpenSSL object returns to the TLS protocol,
   the transport's producer and reading are restored, the request finishes
   (keep-alive goes on), and whatever arrived or was asked meanwhile (a
   pipelined request, a close) is replayed.

Only bodies of at least MIN_BODY, and at most MAX_SENDERS at once; others,
or any connection not in the expected state, take the producer path.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import threading

from twisted.internet import defer, tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.protocols import policies
from zope.interface import implementer

from regd.http.zerocopy import ProducerSlot, tls_layer

log = Logger()

try:  # pyOpenSSL's own cffi binding (the one its Connection objects live in)
    from OpenSSL.SSL import Connection, WantReadError
    from OpenSSL._util import ffi as _ffi, lib as _lib
    _NEEDED = ("SSL_set_bio", "SSL_write", "SSL_get_error", "SSL_set_mode", "SSL_clear_mode", "BIO_new",
               "BIO_s_mem", "BIO_read", "BIO_write", "BIO_free", "ERR_clear_error", "SSL_MODE_ENABLE_PARTIAL_WRITE")
    AVAILABLE = all(hasattr(_lib, name) for name in _NEEDED)
except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
    AVAILABLE = False

MIN_BODY = 1 << 20  # below this the thread hop and BIO swap cost more than they save
MAX_SENDERS = 8  # threads sending at once; later downloads take the producer path meanwhile
PIECE = 192 * 1024  # one pread and one write(2) of its ciphertext (12 records); with the BIO's 64 KiB, the
# memory the thread holds is what a 256 KiB piece alone took when OpenSSL wrote onto the socket itself
STEP = 64 * 1024  # plaintext per SSL_write: the send BIO's buffer grows to about this (not 4/3 of PIECE)
GAP = 4096  # room ahead of the plaintext for the records' headers and tags (more only costs an extra write)
PAGE = mmap.PAGESIZE
# SSL_write copies each record's plaintext from our buffer into OpenSSL's write buffer (memmove). On AMD
# Zen, glibc's memmove (rep movsb) moves 1.5 GB/s instead of 8-16 when the destination lies 1-31 bytes
# after the source modulo 4 KiB, and with the pieces in a 256 KiB bytearray every TLS pull measured here
# hit that: memmove was 24 % of regd's CPU for the pull (3.6 % with this). So the pieces live in a mapping
# of their own and start mid-page, where OpenSSL's heap buffer lands in that window only by a 1-in-128
# chance instead of by the allocator's habit of placing it just after a page-multiple block.
SOURCE_OFFSET = PAGE // 2
_socket_write = os.write  # (tests count and cut the writes)
PROGRESS_EVERY = 16 << 20  # bytes between byte-count reports to the reactor (access log on abort)
_active = 0


def fast_tls_parts(request):
    """(TLS protocol, TCP transport) if this response body may go by L{TLSFileSender}, else None."""
    if not AVAILABLE or _active >= MAX_SENDERS:
        return None
    tls = tls_layer(request)
    if tls is None or not isinstance(getattr(tls, "_tlsConnection", None), Connection):
        return None
    if (tls._lostTLSConnection or tls.disconnecting or not tls._handshakeDone or tls._appSendBuffer
            or getattr(tls._tlsConnection, "_into_ssl", None) is None):
        return None
    transport = tls.transport
    while isinstance(transport, policies.ProtocolWrapper):
        transport = transport.transport
    if not isinstance(transport, tcp.Connection) or transport.disconnected or transport.disconnecting:
        return None
    if transport.producer is None or getattr(transport, "socket", None) is None:
        return None
    return tls, transport


class _Parked:
    """
    Stands in for the OpenSSL connection while a thread owns it. Nothing
    reaches OpenSSL: received bytes are queued, writes and reads are told
    to wait (Twisted buffers writes on WantReadError), and a close or abort
    is recorded and stops the sending thread.
    """

    def __init__(self, sender, real):
        self._sender, self._real = sender, real
        self.received: list[bytes] = []
        self.shutdown_wanted = False

    def bio_write(self, data):
        self.received.append(bytes(data))
        self._sender.stop_reading()
        return len(data)

    def recv(self, *_):
        raise WantReadError()

    def bio_read(self, *_):
        raise WantReadError()

    def send(self, *_):
        raise WantReadError()

    sendall = send

    def do_handshake(self):
        raise WantReadError()

    def shutdown(self):
        self.shutdown_wanted = True
        if self._sender.tls._aborted:
            self._sender.interrupt("connection aborted")
        return False

    def bio_shutdown(self):
        self._sender.interrupt("connection lost")

    def __getattr__(self, name):
        # Read-only queries (peer certificate, negotiated protocol) read session state the
        # writing thread does not change.
        return getattr(self._real, name)


@implementer(IPullProducer)
class TLSFileSender:
    """
    Sends C{length} bytes of C{fd} from C{offset} as the body of C{request}
    over its TLS connection (see the module docstring). C{done} fires with
    None once every byte went to the socket, or fails (the connection is
    then aborted) if the client went away or the file was cut short.
    """

    def __init__(self, request, tls, transport, fd: int, offset: int, length: int, reactor=None):
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.request, self.tls, self.transport = request, tls, transport
        self._fd, self._offset, self._length = fd, offset, length
        self._slot = ProducerSlot(transport)
        self._primed = False
        self._started = False
        self._finished = False
        self._was_reading = False
        self._conn = None
        self._parked = None
        self._pending_in = b""
        self._sock = None
        self._stop = threading.Event()
        self._stop_reason = None
        self._reported = 0
        self.done = defer.Deferred()

    # -- on the reactor ---------------------------------------------------

    def start(self):
        global _active
        request, transport = self.request, self.transport
        _active += 1
        request.write(b"")  # the response head
        aggregator = getattr(self.tls, "_aggregator", None)  # BufferingTLSTransport holds small writes a turn
        if aggregator is not None:
            aggregator.flush()
        if transport.disconnected or getattr(request, "_disconnected", False) or self.tls._lostTLSConnection:
            self._end(ConnectionDone("client went away before the body"))
            return self.done
        self._slot.take(self)
        self._primed = True
        return self.done

    def resumeProducing(self):
        if self._started or self._finished:
            return
        if not self._primed:
            self.transport.startWriting()
            return
        tls = self.tls
        if tls._lostTLSConnection or not isinstance(tls._tlsConnection, Connection) or tls._appSendBuffer:
            self._slot.give_back()
            self.transport.abortConnection()
            self._end(ConnectionLost("TLS connection not in a state to send the body"))
            return
        try:
            leftover = tls._tlsConnection.bio_read(1 << 20)
        except WantReadError:
            leftover = b""
        if leftover:  # never left there by Twisted, but the order of bytes on the wire matters
            self.transport.write(leftover)
            return
        self._park()

    def stopProducing(self):
        """The transport lost its connection."""
        self.interrupt("connection lost")
        if not self._started:
            self._end(ConnectionDone("client went away mid-body"))

    def stop_reading(self):
        self.transport.stopReading()

    def interrupt(self, why: str) -> None:
        """Make the sending thread stop soon (from the reactor)."""
        if self._stop.is_set():
            return
        self._stop_reason = why
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _park(self):
        tls, transport = self.tls, self.transport
        conn = tls._tlsConnection
        self._pending_in = _drain_bio(conn._into_ssl)
        self._was_reading = transport in transport.reactor.getReaders()
        transport.stopReading()
        ssl = conn._ssl
        into, out = _lib.BIO_new(_lib.BIO_s_mem()), _lib.BIO_new(_lib.BIO_s_mem())
        try:
            if into == _ffi.NULL or out == _ffi.NULL:
                raise OSError("BIO_new failed")
            self._sock = transport.socket.dup()
        except OSError as e:  # nothing was replaced
            for bio in (into, out):
                if bio != _ffi.NULL:
                    _lib.BIO_free(bio)
            self._slot.give_back()
            self._resume_reading()
            transport.abortConnection()
            self._end(ConnectionLost(f"cannot hand the connection to a thread: {e}"))
            return
        _lib.SSL_set_bio(ssl, into, out)  # frees Twisted's BIOs, both empty now
        conn._into_ssl, conn._from_ssl = into, out
        _pregrow(out)
        self._conn = conn
        self._parked = _Parked(self, conn)
        tls._tlsConnection = self._parked
        self._partial = _lib.SSL_set_mode(ssl, 0) & _lib.SSL_MODE_ENABLE_PARTIAL_WRITE
        _lib.SSL_clear_mode(ssl, _lib.SSL_MODE_ENABLE_PARTIAL_WRITE)  # whole pieces per SSL_write
        self._started = True
        try:
            threading.Thread(target=self._run, args=(ssl, out), name="regd-tls-send", daemon=True).start()
        except RuntimeError as e:  # no thread to be had: give the connection back and cut it
            self._sent(0, f"cannot start a thread: {e}")

    def _unpark(self):
        conn, tls = self._conn, self.tls
        ssl = conn._ssl
        into, out = _lib.BIO_new(_lib.BIO_s_mem()), _lib.BIO_new(_lib.BIO_s_mem())
        if into == _ffi.NULL or out == _ffi.NULL:  # pragma: no cover - out of memory
            raise MemoryError("BIO_new")
        _lib.SSL_set_bio(ssl, into, out)  # frees the sender's BIOs and the buffer the send BIO grew
        conn._into_ssl, conn._from_ssl = into, out
        if self._partial:
            _lib.SSL_set_mode(ssl, _lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
        self._sock.close()
        self._sock = None
        if tls._tlsConnection is self._parked:
            tls._tlsConnection = conn

    def _resume_reading(self):
        transport = self.transport
        if self._was_reading and transport.connected and not transport.disconnecting:
            transport.startReading()

    def _progress(self, sent: int):
        if not self._finished:
            self.request.sentLength += sent - self._reported
            self._reported = sent

    def _sent(self, sent: int, error: str | None):
        """The thread ended, C{sent} plaintext bytes after the head."""
        self._progress(sent)
        parked = self._parked
        self._unpark()
        self._slot.give_back()
        if error is None:
            self._resume_reading()
            self._end(None)
        else:
            log.info("TLS download cut after {sent} bytes: {why}", sent=sent, why=error)
            if not self.transport.disconnected:
                self.transport.abortConnection()
            self._end(ConnectionLost(error))
        tls = self.tls
        if tls._tlsConnection is self._conn and not tls._lostTLSConnection:
            data = self._pending_in + b"".join(parked.received)
            if data:
                tls.dataReceived(data)
            elif parked.shutdown_wanted and not tls._lostTLSConnection:
                tls._shutdownTLS()

    def _end(self, why):
        global _active
        if self._finished:
            return
        self._finished = True
        _active -= 1
        if why is None:
            self.done.callback(None)
        else:
            self.done.errback(why)

    # -- in the thread ------------------------------------------------------

    def _run(self, ssl, out):
        sent, error = 0, None
        try:
            sent, error = self._send(ssl, out)
        except BaseException as e:  # never leave the connection parked
            error = f"{type(e).__name__}: {e}"
        finally:
            _lib.ERR_clear_error()
            self._reactor.callFromThread(self._sent, sent, error)

    def _send(self, ssl, out):
        gap, piece = GAP, PIECE
        mapping = mmap.mmap(-1, PAGE + gap + piece)
        # The plaintext starts mid-page of a mapping of its own, away from the heap (see SOURCE_OFFSET);
        # the ciphertext is read out into the same mapping, from GAP bytes before it.
        view = memoryview(mapping)[SOURCE_OFFSET:SOURCE_OFFSET + gap + piece]
        cbuf = _ffi.from_buffer(view)
        try:
            return self._send_from(ssl, out, view, cbuf)
        finally:
            _ffi.release(cbuf)
            view.release()
            try:
                mapping.close()
            except BufferError:  # a traceback still holds a slice of it; the collector unmaps it later
                pass

    def _send_from(self, ssl, out, view, cbuf):
        """
        The loop of step 4. C{view}/C{cbuf} is GAP + PIECE bytes: the plaintext is read in at GAP, and
        the ciphertext of its first C{done} bytes goes to [0, GAP + done), which SSL_write has finished
        with, so one piece's records leave in one write(2). Were the records ever to outgrow GAP (TLS
        records can be smaller than 16 KiB, with more overhead), what is there goes out first.
        """
        fd, offset, remaining = self._fd, self._offset, self._length
        gap, piece, step = GAP, PIECE, STEP
        plain = view[gap:]
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLOUT)
        sent = next_report = 0
        while remaining > 0:
            if self._stop.is_set():
                return sent, self._stop_reason
            n = os.preadv(fd, [plain[:min(piece, remaining)]], offset)
            if n == 0:
                return sent, "blob shorter than its stated size"
            done = filled = 0
            while done < n:
                result = _lib.SSL_write(ssl, cbuf + gap + done, min(step, n - done))
                if result <= 0:
                    errno_value = _ffi.errno
                    return sent, _ssl_failure(_lib.SSL_get_error(ssl, result), errno_value)
                done += result
                while True:  # the BIO's ciphertext into [filled, gap + done)
                    room = gap + done - filled
                    if room == 0:
                        error = self._write_all(view[:filled], poller)
                        if error is not None:
                            return sent, error
                        filled, room = 0, gap + done
                    got = _lib.BIO_read(out, cbuf + filled, room)
                    if got > 0:
                        filled += got
                    if got < room:  # the BIO is empty
                        break
            error = self._write_all(view[:filled], poller)
            if error is not None:
                return sent, error
            offset += n
            remaining -= n
            sent += n
            if sent >= next_report:
                next_report = sent + PROGRESS_EVERY
                self._reactor.callFromThread(self._progress, sent)
        return sent, None

    def _write_all(self, data, poller) -> str | None:
        """Write all of C{data} to the socket, polling while it is full; why not, if it cannot be."""
        fd, total, pos = self._sock.fileno(), len(data), 0
        with data:
            while pos < total:
                try:
                    pos += _socket_write(fd, data[pos:])
                    continue
                except BlockingIOError:
                    pass
                except OSError as e:
                    return self._stop_reason if self._stop.is_set() else f"socket: {e.strerror or e}"
                if self._stop.is_set():
                    return self._stop_reason
                poller.poll(1000)
        return None


def _pregrow(bio) -> None:
    """
    Give a memory BIO, here on the reactor thread and in one malloc, a buffer that holds what one
    SSL_write of STEP bytes puts in it (records of 16 KiB plus up to 64 bytes' overhead each), then
    empty it again; OpenSSL keeps the buffer. Grown by the sending thread, record by record, it took
    three reallocs in a malloc arena of that thread's, which all stayed in the RSS.
    """
    want = -(-STEP // 16384) * (16384 + 64)
    # BUF_MEM grows to (len + 3) // 3 * 4 bytes when a write does not fit.
    size = want * 3 // 4 - 3
    while (size + 3) // 3 * 4 < want:
        size += 1
    buf = _ffi.new("char[]", size)
    if _lib.BIO_write(bio, buf, size) == size:
        while _lib.BIO_read(bio, buf, size) > 0:
            pass


def _drain_bio(bio) -> bytes:
    """Whatever a memory BIO still holds (BIO_read until empty)."""
    chunks = []
    buf = _ffi.new("char[]", 65536)
    while True:
        n = _lib.BIO_read(bio, buf, 65536)
        if n <= 0:
            return b"".join(chunks)
        chunks.append(_ffi.buffer(buf, n)[:])


def _ssl_failure(code: int, errno_value: int) -> str:
    if code == getattr(_lib, "SSL_ERROR_SYSCALL", -1) and errno_value:
        return f"socket: {os.strerror(errno_value)}"
    if code == getattr(_lib, "SSL_ERROR_WANT_READ", -1):
        return "TLS peer started a handshake mid-body"
    return f"SSL_write failed (SSL error {code})"
