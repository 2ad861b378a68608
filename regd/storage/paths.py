# -*- test-case-name: tests.storage.test_paths -*-
"""
The on-disk layout, spelled out here and nowhere else.

It is the layout of the reference registry's storage, so a data directory
can be shared with it (one at a time): see shared/STYLE.md. Every function
is pure and takes already-validated names, tags and digests; the result is a
root-relative path with '/' separators.
"""

from __future__ import annotations

from regd.oci.digest import Digest

V2 = "docker/registry/v2"
BLOBS = f"{V2}/blobs"
REPOSITORIES = f"{V2}/repositories"
REGD = "regd"
SPOOL = f"{REGD}/spool"
CACHE_GENERATION = f"{REGD}/cache-generation"  # rewritten on every delete; see regd.cache.descriptors
HEALTH = f"{REGD}/health"  # written and read back by the storage health check
GC = f"{REGD}/gc"
PENDING = f"{GC}/pending"  # notes of operations about to link content (see regd.registry.pending)
CONDEMNED = f"{GC}/condemned"  # blobs a collection moved aside before deleting them
UNLINKING = f"{GC}/unlinking"  # untagged revisions a collection is unlinking (its intent, for crash recovery)
INDEX = f"{REGD}/index"
INDEX_CHANGES = f"{INDEX}/changes"  # change markers other instances refresh their index from
SESSION_SECRET = f"{REGD}/ui/sessionsecret"  # shared by every instance when http.secret is unset


def _alg(digest: Digest) -> str:
    # '+', '.' and ';' in algorithm names become directory separators.
    return digest.algorithm.replace("+", "/").replace(".", "/").replace(";", "/")


def blob_dir(digest: Digest) -> str:
    return f"{BLOBS}/{_alg(digest)}/{digest.hex[:2]}/{digest.hex}"


def blob_data(digest: Digest) -> str:
    return f"{blob_dir(digest)}/data"


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layers(name: str) -> str:
    return f"{repository(name)}/_layers"


def layer_link(name: str, digest: Digest) -> str:
    return f"{layers(name)}/{_alg(digest)}/{digest.hex}/link"


def layer_dir(name: str, digest: Digest) -> str:
    return f"{layers(name)}/{_alg(digest)}/{digest.hex}"


def manifests(name: str) -> str:
    return f"{repository(name)}/_manifests"


def revisions(name: str) -> str:
    return f"{manifests(name)}/revisions"


def revision_dir(name: str, digest: Digest) -> str:
    return f"{revisions(name)}/{_alg(digest)}/{digest.hex}"


def revision_link(name: str, digest: Digest) -> str:
    return f"{revision_dir(name, digest)}/link"


def tags(name: str) -> str:
    return f"{manifests(name)}/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{tags(name)}/{tag}"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_link(name: str, tag: str, digest: Digest) -> str:
    return f"{tag_dir(name, tag)}/index/{_alg(digest)}/{digest.hex}/link"


def referrers(name: str, subject: Digest) -> str:
    """regd's referrers index (ignored by the reference registry)."""
    return f"{manifests(name)}/referrers/{_alg(subject)}/{subject.hex}"


def referrer_dir(name: str, subject: Digest, referrer: Digest) -> str:
    return f"{referrers(name, subject)}/{_alg(referrer)}/{referrer.hex}"


def referrer_link(name: str, subject: Digest, referrer: Digest) -> str:
    return f"{referrer_dir(name, subject, referrer)}/link"


def uploads(name: str) -> str:
    return f"{repository(name)}/_uploads"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{uploads(name)}/{upload_id}"


def upload_data(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/data"


def upload_started_at(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


def upload_hash_state(name: str, upload_id: str) -> str:
    """regd's own running-hash state; registry:2 keeps Go states under hashstates/ and ignores this."""
    return f"{upload_dir(name, upload_id)}/regdhashstate"


def pending_note(note_id: str) -> str:
    return f"{PENDING}/{note_id}"


def unlinking_note(note_id: str) -> str:
    return f"{UNLINKING}/{note_id}"


def condemned_blob(digest: Digest) -> str:
    """Where a garbage collection parks a blob's bytes before deciding for good."""
    return f"{CONDEMNED}/{_alg(digest)}/{digest.hex}"


def index_description(name: str) -> str:
    """An admin-set repository description (the file name cannot clash with a nested name: no '_' start)."""
    return f"{INDEX}/descriptions/{name}/_description"


def index_change_bucket(bucket: str) -> str:
    return f"{INDEX_CHANGES}/{bucket}"


def index_change(bucket: str, marker: str) -> str:
    return f"{INDEX_CHANGES}/{bucket}/{marker}"
