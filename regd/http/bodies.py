# -*- test-case-name: tests.http.test_blobs -*-
"""
Streaming response bodies.

Klein finishes a request as soon as a handler's result is written, so a
handler that wants to stream returns this Resource instead: Klein renders it
and stays out of the way, and we finish the request when the last byte went
out. Backpressure comes from the storage reader's producer.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET


class StreamingBody(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, blob, offset: int, length: int):
        super().__init__()
        self._blob = blob
        self._offset = offset
        self._length = length

    def render(self, request):
        gone = []
        request.notifyFinish().addErrback(gone.append)
        d = self._blob.stream_to(request, self._offset, self._length)

        def done(_):
            if not gone and not request.finished:
                request.finish()

        def aborted(failure):
            # The client went away mid-body: normal for pulls, not an error.
            self._blob.close()
            self.log.debug("blob stream ended early: {why}", why=failure.getErrorMessage())

        d.addCallbacks(done, aborted)
        return NOT_DONE_YET
