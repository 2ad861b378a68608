"""Error codes, statuses and the spec's JSON body."""

import json

from twisted.trial.unittest import SynchronousTestCase

from regd.oci import errors


class ErrorTests(SynchronousTestCase):
    def test_codes_and_statuses(self):
        table = {
            errors.BlobUnknown: ("BLOB_UNKNOWN", 404), errors.BlobUploadInvalid: ("BLOB_UPLOAD_INVALID", 400),
            errors.BlobUploadUnknown: ("BLOB_UPLOAD_UNKNOWN", 404), errors.DigestInvalid: ("DIGEST_INVALID", 400),
            errors.ManifestBlobUnknown: ("MANIFEST_BLOB_UNKNOWN", 400),
            errors.ManifestInvalid: ("MANIFEST_INVALID", 400), errors.ManifestUnknown: ("MANIFEST_UNKNOWN", 404),
            errors.NameInvalid: ("NAME_INVALID", 400), errors.NameUnknown: ("NAME_UNKNOWN", 404),
            errors.SizeInvalid: ("SIZE_INVALID", 400), errors.Unauthorized: ("UNAUTHORIZED", 401),
            errors.Denied: ("DENIED", 403), errors.Unsupported: ("UNSUPPORTED", 405),
            errors.TooManyRequests: ("TOOMANYREQUESTS", 429), errors.RangeInvalid: ("RANGE_INVALID", 416),
            errors.PaginationNumberInvalid: ("PAGINATION_NUMBER_INVALID", 400),
            errors.RequestTooLarge: ("SIZE_INVALID", 413),
        }
        for cls, (code, status) in table.items():
            error = cls()
            self.assertEqual((error.code, error.status), (code, status), cls)

    def test_body_format(self):
        error = errors.ManifestUnknown(detail={"tag": "x"}, headers={"X": "1"})
        self.assertEqual(json.loads(error.body()),
                         {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown",
                                      "detail": {"tag": "x"}}]})
        self.assertEqual(error.headers, {"X": "1"})
        self.assertEqual(json.loads(errors.NameInvalid("bad").body())["errors"][0],
                         {"code": "NAME_INVALID", "message": "bad"})
