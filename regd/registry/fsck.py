# -*- test-case-name: tests.registry.test_fsck -*-
"""
A storage check for after a disk incident: every blob's bytes must hash to
its name, and every link (layers, manifest revisions, tags, referrers) must
hold a valid digest that names its own path and points at a present blob.
With repair, corrupt blobs are moved aside to <root>/regd/quarantine (never
deleted) and dangling links are removed. A link directory whose link was
never written (only a crash's temp file, if anything) is what an interrupted
write looks like, not damage: clients never see it, so it is only counted.
"""

from __future__ import annotations

import attrs

from regd.oci.digest import Digest
from regd.oci.errors import RegistryError
from regd.registry import links
from regd.storage import paths
from regd.storage.interfaces import PathNotFound


@attrs.define
class Problems:
    corrupt_blobs: list = attrs.field(factory=list)  # digests whose bytes hash otherwise
    dangling_links: list = attrs.field(factory=list)  # link paths pointing at nothing
    bad_links: list = attrs.field(factory=list)  # unreadable, or naming another digest
    repaired: list = attrs.field(factory=list)
    blobs_checked: int = 0
    links_checked: int = 0
    # Link directories whose link was never written (a process killed mid-write): harmless,
    # invisible to clients, so neither a problem nor something to repair.
    leftovers: int = 0

    @property
    def clean(self) -> bool:
        return not (self.corrupt_blobs or self.dangling_links or self.bad_links)


QUARANTINE = f"{paths.REGD}/quarantine"


class StorageCheck:
    def __init__(self, registry, repair: bool = False):
        self._registry = registry
        self._driver = registry.driver
        self.repair = repair

    async def run(self) -> Problems:
        problems = Problems()
        await self._check_blobs(problems)
        for name in await self._registry.listing.repositories():
            await self._check_repository(name, problems)
        return problems

    async def _check_blobs(self, problems: Problems) -> None:
        for digest in await links.stored_blobs(self._driver):
            try:
                hasher = await self._driver.digest_file(paths.blob_data(digest), digest.algorithm)
            except PathNotFound:
                continue
            problems.blobs_checked += 1
            if hasher.hexdigest() != digest.hex:
                problems.corrupt_blobs.append(str(digest))
                if self.repair:
                    await self._driver.move(paths.blob_data(digest), f"{QUARANTINE}/{digest.algorithm}-{digest.hex}")
                    await links.delete_if_present(self._driver, paths.blob_dir(digest))
                    self._registry.manifests.forget(digest)
                    await self._registry.blobs.forget([digest])
                    problems.repaired.append(f"quarantined {digest}")

    async def _link_dirs(self, base: str, depth: int) -> list[str]:
        """Directories C{depth} levels below C{base}."""
        level = [base]
        for _ in range(depth):
            level = [f"{d}/{child}" for d in level for child in await links.list_or_empty(self._driver, d)]
        return level

    async def _check_link(self, path: str, expected: Digest | None, problems: Problems,
                          remove: str) -> Digest | None:
        problems.links_checked += 1
        if not await links.exists(self._driver, path):
            problems.leftovers += 1
            return None
        digest = await links.read_link(self._driver, path)
        if digest is None or (expected is not None and digest != expected):
            problems.bad_links.append(path)
            if self.repair:
                await links.delete_if_present(self._driver, remove)
                problems.repaired.append(f"removed {remove}")
            return None
        if await self._registry.blobs.global_size(digest) is None:
            problems.dangling_links.append(path)
            if self.repair:
                await links.delete_if_present(self._driver, remove)
                problems.repaired.append(f"removed {remove}")
            return None
        return digest

    @staticmethod
    def _digest_of(directory: str) -> Digest | None:
        *_, alg, hex_ = directory.split("/")
        try:
            return Digest.parse(f"{alg}:{hex_}")
        except RegistryError:
            return None

    async def _check_repository(self, name: str, problems: Problems) -> None:
        for base in (paths.layers(name), paths.revisions(name)):
            for directory in await self._link_dirs(base, 2):
                await self._check_link(f"{directory}/link", self._digest_of(directory), problems, directory)
        for tag in await links.list_or_empty(self._driver, paths.tags(name)):
            tag_dir = paths.tag_dir(name, tag)
            await self._check_link(paths.tag_current_link(name, tag), None, problems, tag_dir)
            for directory in await self._link_dirs(f"{tag_dir}/index", 2):
                await self._check_link(f"{directory}/link", self._digest_of(directory), problems, directory)
        referrers = f"{paths.manifests(name)}/referrers"
        for directory in await self._link_dirs(referrers, 4):
            await self._check_link(f"{directory}/link", self._digest_of(directory), problems, directory)
