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
import time
import uuid

import attrs
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import ResponseDone
from zope.interface import implementer

from regd.oci.hashstate import running_hasher
from regd.storage import paths
from regd.storage.interfaces import BodyPosition, IBlobReader, IBodySpool
from regd.storage.s3client import Chunks

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


@implementer(IBodySpool)
class S3Spool(BodyPosition):
    """
    A request body on its way into the bucket. Bytes are kept until a part
    of C{chunksize} is full, which is then sent as the next part of a
    multipart upload on C{regd/spool/<uuid>} while more bytes arrive; while
    a part is being sent and the next is already full, the connection is
    paused. Small bodies (under one part) never leave memory until a
    driver stores them with one PUT.

    With an C{aim} (L{regd.storage.interfaces.SpoolAim}: a body that ends
    its upload, with its digest known from the request line), the
    multipart upload is begun on the blob's own key instead, if the aim is
    confirmed, and left incomplete: S3 shows nothing of it until
    L{complete} (after the digest was checked), and an abandoned one is
    aborted. A small object beside the spool's name (C{<path>.aimed}) names
    that upload, so purging finds it if this process dies.
    """

    def __init__(self, driver: "S3Driver", aim=None):
        self._driver = driver
        self.hasher = running_hasher()
        self.size = 0
        self.path = spool_path(driver.reactor)
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._position = 0
        self._upload_id = None
        self._parts: list[tuple[int, str]] = []
        self._sending = None  # Deferred of the part being sent
        self._failure = None
        self._producer = None
        self._paused = False
        self.adopted = False
        self.closed = False
        self.completed = False  # the multipart upload became the object at self.path
        self.aim = aim
        self.aimed_at = None  # the blob key the parts go to, once the aim was confirmed
        self._marker = None

    def prefer_fast_hash(self) -> None:
        """A body that ends an upload: hashlib (its state is never saved), as the filesystem spool."""
        if self.size == 0:
            self.hasher = hashlib.sha256()

    def skip_hash(self) -> None:
        """A later chunk: the driver hashes it into the upload's running hash when it is stored."""
        if self.size == 0:
            self.hasher = None

    # twisted.web's file methods

    def set_producer(self, producer) -> None:
        self._producer = producer

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ValueError("write to a closed spool")
        if self.hasher is not None:
            self.hasher.update(data)
        self.size += len(data)
        if self._failure is not None:
            return  # the body is lost already; store raises the failure
        self._chunks.append(bytes(data))
        self._buffered += len(data)
        if self._buffered >= self._driver.chunksize:
            if self._sending is None:
                self._send_part()
            else:
                # Checked on every write: HTTPChannel may resume the transport on its own.
                self._pause()

    def read(self, size: int = -1) -> bytes:
        if self._parts or self._sending is not None:
            raise OSError("an S3 spool cannot be read back once parts were sent")
        data = b"".join(self._chunks)
        self._chunks = [data] if data else []
        end = len(data) if size is None or size < 0 else self._position + size
        out = data[self._position:end]
        self._position += len(out)
        return out

    def in_memory(self) -> bool:
        return not self._parts and self._sending is None and self._upload_id is None

    def getvalue(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks = [data] if data else []
        return data

    # parts

    def _pause(self):
        if self._producer is not None:
            self._paused = True
            self._producer.pauseProducing()

    def _resume(self):
        if self._paused and self._producer is not None:
            self._paused = False
            self._producer.resumeProducing()

    def _send_part(self):
        data = Chunks(self._chunks)  # sent as the pieces arrived: no joined copy
        self._chunks, self._buffered = [], 0
        self._sending = defer.ensureDeferred(self._upload_part(data))
        self._sending.addErrback(self._failed)
        self._sending.addBoth(self._sent)

    async def _upload_part(self, data):
        if self._upload_id is None:
            if self.closed:
                return  # refused (a wrong digest, say) before its first part left: nothing to send
            await self._begin()
        number = len(self._parts) + 1
        etag = await self._driver._upload_part(self.aimed_at or self.path, self._upload_id, number, data)
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
        self._failure = failure
        self._chunks, self._buffered = [], 0
        log.warn("sending an upload part to S3 failed: {error}", error=str(failure.value))

    def _sent(self, _):
        self._sending = None
        if self._failure is None and self._buffered >= self._driver.chunksize and not self.closed:
            self._send_part()  # the next part was waiting: it goes, and its room fills meanwhile
        self._resume()

    async def finish(self):
        """
        Wait for the parts in flight; then either the body (bytes, when it
        never filled a part) or None once the whole body is the object at
        C{self.path}.
        """
        while self._sending is not None:
            await self._sending
        if self._failure is not None:
            self._failure.raiseException()
        if self._upload_id is None:
            return self.getvalue()
        if self._buffered:
            data = Chunks(self._chunks)
            self._chunks, self._buffered = [], 0
            self._sending = defer.ensureDeferred(self._upload_part(data))
            try:
                await self._sending
            finally:
                self._sending = None
        if self.aimed_at is None:
            await self._driver._complete_multipart(self.path, self._upload_id, self._parts)
            self.completed = True
        return None

    async def complete(self):
        """Make an aimed body the blob: only once its digest was checked."""
        await self._driver._complete_multipart(self.aimed_at, self._upload_id, self._parts)
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
        self._chunks, self._buffered = [], 0
        self._resume()
        if self.adopted or (self._upload_id is None and self._sending is None):
            return
        d = defer.ensureDeferred(self._discard())
        d.addErrback(lambda f: log.info("could not remove an abandoned upload spool {path}: {error}",
                                        path=self.path, error=str(f.value)))
        self.discarded = d  # nobody waits for it but tests

    async def _discard(self):
        while self._sending is not None:
            try:
                await self._sending
            except Exception:
                pass
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
    return f"{paths.SPOOL}/{int(now)}-{uuid.uuid4().hex}"


def spool_started(key: str) -> float | None:
    try:
        return float(key.rsplit("/", 1)[-1].split("-", 1)[0])
    except ValueError:
        return None
