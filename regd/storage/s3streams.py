# -*- test-case-name: tests.storage.test_s3 -*-
"""
Bytes on their way into and out of the bucket, for the S3 driver
(regd.storage.s3): the spool that sends a request body as multipart parts
while it arrives, and the push producer that streams ranges of objects to a
client with the client's backpressure.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from zope.interface import implementer

from regd.oci.hashstate import running_hasher
from regd.randomids import random_ids
from regd.storage import paths
from regd.storage.interfaces import BodyPosition, IBlobReader, IBodySpool, StorageError
from regd.storage.s3client import FilePart, StreamedBody

log = Logger()


@attrs.frozen
class Piece:
    """Bytes [start, end) of the object at key (a root-relative path)."""
    path: str
    start: int
    end: int
    whole: bool = False  # the entire object: read without a Range header

    @property
    def size(self) -> int:
        return self.end - self.start




# -- uploads into the bucket while the body arrives ----------------------------

# Parts of one body in flight at once: one being written, one waiting for S3's answer.
PARTS_IN_FLIGHT = 2


@implementer(IBodySpool)
class S3Spool(BodyPosition):
    """
    A request body on its way into the bucket, as the parts of a multipart
    upload on C{regd/spool/<uuid>}, each sent while the body arrives,
    hashed on the way. How depends on what the HTTP layer said of the
    body's length (L{expect_length}):

      - known, at least one part (C{chunksize}): every part's length is
        known up front, so each part is written into its UploadPart
        request as its bytes arrive (L{StreamedBody}); when the connection
        to S3 pushes back, or the next part's request has no connection
        yet, the client's connection is paused. Memory per body: what the
        two connections buffer, not the part.
      - known, under one part: kept in memory, stored with one PUT.
      - unknown (chunked): each part is counted into a local temporary
        file (its first C{in_memory_part} bytes in memory), then sent from it
        while the next fills; the client's connection is paused while a
        full part waits for the one being sent. At most two parts' worth
        of local disk per body; a body under one part is stored with one
        PUT.

    With an C{aim} (L{regd.storage.interfaces.SpoolAim}: a body that ends
    its upload, with its digest known from the request line), the
    multipart upload is begun on the blob's own key instead, if the aim is
    confirmed, and left incomplete: S3 shows nothing of it until
    L{complete} (after the digest was checked), and an abandoned one is
    aborted. A small object beside the spool's name (C{<path>.aimed}) names
    that upload, so purging finds it if this process dies.
    """

    # A part of a body of unknown length stays in memory up to this size before its file is made:
    # such bodies are often small (configs, small layers).
    in_memory_part = 1024 * 1024

    def __init__(self, driver: "S3Driver", aim=None):
        self._driver = driver
        self.hasher = running_hasher()
        self.size = 0
        self.path = spool_path(driver.reactor)
        self._length = None  # the body's declared length (expect_length), None while unknown
        self._chunks: list[bytes] = []  # a known body under one part
        self._file = None  # unknown length: the part being counted
        self._streamed = None  # known length: the part being written into its request
        self._position = 0
        self._upload_id = None
        self._numbered = 0  # parts begun so far
        self._parts: list[tuple[int, str]] = []
        self._sending: set = set()  # Deferreds of the parts in flight
        self._settling: list = []  # Deferreds of those waiting for none to be in flight
        self._beginning = defer.DeferredLock()  # the first part begins the multipart upload; others wait
        self._slots = defer.DeferredSemaphore(PARTS_IN_FLIGHT)
        self._failure = None
        self._producer = None
        self._paused = False
        self.adopted = False
        self.closed = False
        self.completed = False  # the multipart upload became the object at self.path
        self.aim = aim
        self.aimed_at = None  # the blob key the parts go to, once the aim was confirmed
        self._marker = None

    def expect_length(self, length: int) -> None:
        """The body's length (its Content-Length), told before its first byte."""
        if self.size == 0:
            self._length = length

    def prefer_fast_hash(self) -> None:
        """A body that ends an upload: hashlib (its state is never saved), as the filesystem spool."""
        if self.size == 0:
            self.hasher = hashlib.sha256()

    def skip_hash(self) -> None:
        """A later chunk: the driver hashes it into the upload's running hash when it is stored."""
        if self.size == 0:
            self.hasher = None

    @property
    def _streaming(self) -> bool:
        return self._length is not None and self._length >= self._driver.chunksize

    # twisted.web's file methods

    def set_producer(self, producer) -> None:
        self._producer = producer

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ValueError("write to a closed spool")
        data = bytes(data)
        if self.hasher is not None:
            self.hasher.update(data)
        self.size += len(data)
        if self._failure is not None:
            return  # the body is lost already; store raises the failure
        if self._length is None:
            self._count(data)
        elif self._length < self._driver.chunksize:
            self._chunks.append(data)
        elif self.size > self._length:
            self._failed(Failure(StorageError("the body is longer than its declared length")))
        else:
            self._stream(data)
        self._hold_back()

    def read(self, size: int = -1) -> bytes:
        if self._numbered:
            raise OSError("an S3 spool cannot be read back once parts were sent")
        data = self.getvalue()
        end = len(data) if size is None or size < 0 else self._position + size
        out = data[self._position:end]
        self._position += len(out)
        return out

    def getvalue(self) -> bytes:
        """The body, while none of it was sent (under one part)."""
        if self._file is not None:
            self._file.seek(0)
            return self._file.read()
        data = b"".join(self._chunks)
        self._chunks = [data] if data else []
        return data

    # flow control

    def _hold_back(self) -> None:
        """
        Pause the client's connection while more bytes would only pile up
        here, resume it once they would not. Checked on every write too:
        HTTPChannel may resume the transport on its own.
        """
        if self.closed or self._failure is not None:
            full = False
        elif self._streamed is not None:
            full = self._streamed.blocking
        else:
            full = self._file is not None and bool(self._sending) and self._file.tell() >= self._driver.chunksize
        if full:
            if self._producer is not None:
                self._paused = True
                self._producer.pauseProducing()
        elif self._paused and self._producer is not None:
            self._paused = False
            self._producer.resumeProducing()

    # parts

    def _stream(self, data: bytes) -> None:
        chunksize = self._driver.chunksize
        while data:
            part = self._streamed
            if part is None or part.received == part.length:
                length = min(chunksize, self._length - self._numbered * chunksize)
                part = self._streamed = StreamedBody(length, self._hold_back)
                self._launch(part)
            room = part.length - part.received
            part.write(data[:room])  # the whole of data (no copy) unless it crosses into the next part
            data = data[room:]

    def _count(self, data: bytes) -> None:
        if self._file is None:
            self._file = tempfile.SpooledTemporaryFile(max_size=self.in_memory_part)
        self._file.write(data)
        if self._file.tell() >= self._driver.chunksize and not self._sending:
            self._send_file()

    def _send_file(self) -> None:
        """The part counted so far goes; the next one is counted into a new file meanwhile."""
        file, self._file = self._file, None
        self._launch(FilePart(file, file.tell())).addBoth(lambda result: (file.close(), result)[1])

    def _launch(self, body):
        self._numbered += 1
        d = defer.ensureDeferred(self._upload_part(self._numbered, body))
        self._sending.add(d)
        d.addErrback(self._failed)
        d.addBoth(self._sent, d)
        return d

    async def _upload_part(self, number: int, body) -> None:
        await self._beginning.acquire()
        try:
            if self._upload_id is None:
                if self.closed or self._failure is not None:
                    return  # refused (a wrong digest, say) before its first part left: nothing to send
                await self._begin()
        finally:
            self._beginning.release()
        await self._slots.acquire()
        try:
            if self.closed or self._failure is not None:
                return
            etag = await self._driver._upload_part(self.aimed_at or self.path, self._upload_id, number, body)
        finally:
            self._slots.release()
        self._parts.append((number, etag))

    async def _begin(self):
        if self.aim is not None and await self._confirmed():
            self._upload_id = await self._driver._create_multipart(self.aim.path)
            self.aimed_at = self.aim.path
            marker = self.path + AIMED
            await self._driver.put_content(marker, json.dumps(
                {"key": self.aimed_at, "upload": self._upload_id}).encode("ascii"))
            self._marker = marker
        else:
            self._upload_id = await self._driver._create_multipart(self.path)

    async def _confirmed(self) -> bool:
        try:
            return bool(await self.aim.confirm())
        except Exception as e:
            log.info("not sending a body straight to its blob: {error}", error=str(e))
            return False

    def _failed(self, failure):
        """A part failed: the body is lost (whatever still arrives is dropped) and so is the upload."""
        if self._failure is None:
            self._failure = failure
            if not self.closed:
                log.warn("sending an upload part to S3 failed: {error}", error=str(failure.value))
        self._drop(failure.value)
        self._hold_back()

    def _drop(self, reason: BaseException) -> None:
        self._chunks = []
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._streamed is not None:
            self._streamed.fail(reason)  # a part still being written is abandoned with its request

    def _sent(self, _, d):
        self._sending.discard(d)
        if (self._failure is None and not self.closed and self._file is not None and not self._sending
                and self._file.tell() >= self._driver.chunksize):
            self._send_file()  # the next part was waiting: it goes, and its room fills meanwhile
        self._hold_back()
        if not self._sending:
            waiting, self._settling = self._settling, []
            for waiter in waiting:
                waiter.callback(None)

    async def _settled(self) -> None:
        """
        Wait until no part is in flight (errors were recorded by _failed).
        Each wait has a Deferred of its own: resuming the client from a
        part's callbacks may run a waiter while that part's are unfinished.
        """
        while self._sending:
            waiter = defer.Deferred()
            self._settling.append(waiter)
            await waiter

    async def finish(self):
        """
        Wait for the parts in flight; then either the body (bytes, when it
        never filled a part) or None once the whole body is the object at
        C{self.path}.
        """
        if self._streaming and self.size != self._length and self._failure is None:
            self._failed(Failure(StorageError(f"the body ended after {self.size} of its {self._length} bytes")))
        await self._settled()
        if self._failure is not None:
            self._failure.raiseException()
        if not self._numbered:
            return self.getvalue()
        if self._file is not None and self._file.tell():
            self._send_file()
            await self._settled()
            if self._failure is not None:
                self._failure.raiseException()
        if self.aimed_at is None:
            await self._driver._complete_multipart(self.path, self._upload_id, sorted(self._parts))
            self.completed = True
        return None

    async def complete(self):
        """Make an aimed body the blob: only once its digest was checked."""
        await self._driver._complete_multipart(self.aimed_at, self._upload_id, sorted(self._parts))
        self.completed = self.adopted = True
        await self._forget_marker()

    async def _forget_marker(self):
        if self._marker is not None:
            marker, self._marker = self._marker, None
            try:
                await self._driver._delete_keys([self._driver._key(marker)])
            except Exception as e:  # purging removes it later
                log.info("could not remove {path}: {error}", path=marker, error=str(e))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._drop(ConnectionDone("the request body was abandoned"))
        self._hold_back()
        if self.adopted or (self._upload_id is None and not self._sending):
            self.discarded = defer.succeed(None)  # nothing to discard
            return
        d = defer.ensureDeferred(self._discard())
        d.addErrback(lambda f: log.info("could not remove an abandoned upload spool {path}: {error}",
                                        path=self.path, error=str(f.value)))
        self.discarded = d  # nobody waits for it but tests

    async def _discard(self):
        await self._settled()
        if self.completed:
            await self._driver.delete(self.path)
        elif self._upload_id is not None:
            await self._driver._abort_multipart(self.aimed_at or self.path, self._upload_id)
        await self._forget_marker()


# -- streaming reads -------------------------------------------------------------


class _BodyReceiver(Protocol):
    def __init__(self, streamer, done):
        self._streamer = streamer
        self._done = done

    def connectionMade(self):
        self._streamer._attach(self.transport)

    def dataReceived(self, data):
        self._streamer._data(data)

    def connectionLost(self, reason):
        self._streamer._attach(None)
        if reason.check(ResponseDone):
            self._done.callback(None)
        else:
            self._done.errback(reason)


@implementer(IPushProducer)
class Streamer:
    """
    Streams pieces of objects to a consumer, one ranged GET after another,
    pausing the S3 connection whenever the consumer (the client's
    connection) asks to pause.
    """

    def __init__(self, client, consumer, pieces: list[Piece], key_of, on_close=None):
        self._client = client
        self._consumer = consumer
        self._pieces = pieces
        self._key_of = key_of
        self._on_close = on_close
        self._transport = None
        self._paused = False
        self._stopped = False
        self._pending = None
        self.done = defer.Deferred()

    def start(self, register: bool = True):
        if register:
            self._consumer.registerProducer(self, True)
        d = defer.ensureDeferred(self._run())
        d.addErrback(lambda f: None)
        return self.done

    async def _run(self):
        try:
            for piece in self._pieces:
                if piece.size <= 0:
                    continue
                if self._stopped:
                    return
                ranged = {} if piece.whole else {"Range": f"bytes={piece.start}-{piece.end - 1}"}
                self._pending = defer.ensureDeferred(self._client.request(
                    "GET", self._key_of(piece.path), headers=ranged, ok=(200, 206), stream=True))
                try:
                    response = await self._pending
                finally:
                    self._pending = None
                received = defer.Deferred()
                response.deliverBody(_BodyReceiver(self, received))
                await received
            self._finish(None)
        except Exception as e:
            self._finish(e)

    def _finish(self, error):
        if self.done.called:
            return
        if not self._stopped:
            self._consumer.unregisterProducer()
        if self._on_close is not None:
            self._on_close()
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)

    def _attach(self, transport):
        self._transport = transport
        if transport is not None:
            if self._stopped:
                transport.stopProducing()
            elif self._paused:
                transport.pauseProducing()

    def _data(self, data):
        if not self._stopped:
            self._consumer.write(data)

    def pauseProducing(self):
        self._paused = True
        if self._transport is not None:
            self._transport.pauseProducing()

    def resumeProducing(self):
        self._paused = False
        if self._transport is not None:
            self._transport.resumeProducing()

    def stopProducing(self):
        if self._stopped:
            return
        self._stopped = True
        if self._transport is not None:
            self._transport.stopProducing()
        self._finish(ConnectionDone("consumer stopped the producer"))
        if self._pending is not None:
            self._pending.cancel()


class Collector:
    """A consumer that feeds a hasher or a list (reads that are not to a client)."""

    def __init__(self, sink):
        self._sink = sink

    def registerProducer(self, producer, streaming):
        pass

    def unregisterProducer(self):
        pass

    def write(self, data):
        self._sink(data)


@implementer(IBlobReader)
class S3Reader:
    def __init__(self, driver: "S3Driver", pieces: list[Piece], size: int):
        self._driver = driver
        self._pieces = pieces
        self.size = size

    def stream_to(self, consumer, offset: int = 0, length: int | None = None):
        if length is None:
            length = self.size - offset
        streamer = Streamer(self._driver.client, consumer, window(self._pieces, offset, offset + length),
                             self._driver._key)
        return streamer.start()

    def read_all(self):
        return defer.ensureDeferred(self._driver._read_pieces(self._pieces))

    def close(self) -> None:
        pass


def window(pieces: list[Piece], start: int, end: int) -> list[Piece]:
    """The parts of C{pieces} (laid end to end) covering logical bytes [start, end)."""
    out, position = [], 0
    for piece in pieces:
        lo, hi = max(start, position), min(end, position + piece.size)
        if lo < hi:
            first, last = piece.start + lo - position, piece.start + hi - position
            out.append(Piece(piece.path, first, last, piece.whole and (first, last) == (piece.start, piece.end)))
        position += piece.size
    return out



AIMED = ".aimed"  # beside a spool's name: the multipart upload it began on a blob's key


def spool_path(clock) -> str:
    """A new spool's path; its name starts with the time it began, for sweep_spool."""
    now = clock.seconds() if clock is not None and hasattr(clock, "seconds") else time.time()
    return f"{paths.SPOOL}/{int(now)}-{random_ids.hex()}"


def spool_started(key: str) -> float | None:
    try:
        return float(key.rsplit("/", 1)[-1].split("-", 1)[0])
    except ValueError:
        return None
