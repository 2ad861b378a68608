"""The pooled random source of ids and names."""

from __future__ import annotations

import threading
import uuid

from regd.randomids import RandomIds


def test_hex_names_are_distinct_across_refills_and_threads():
    ids = RandomIds(batch=4)
    made = []

    def take():
        names = [ids.hex() for _ in range(2000)]
        made.extend(names)
    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == len(set(made)) == 8000
    assert all(len(name) == 32 and int(name, 16) >= 0 for name in made)


def test_ids_are_distinct_version_4_uuids_across_refills():
    ids = RandomIds(batch=4)
    made = [ids() for _ in range(4 * 50)]
    assert len(set(made)) == len(made)
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
