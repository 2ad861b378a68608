# -*- test-case-name: tests.registry.test_gc -*-
"""
`regd` command-line tools that work on a registry's storage:

    regd garbage-collect --config /etc/regd/regd.yml [--dry-run] [--delete-untagged] [--grace 1h]
    regd fsck --config /etc/regd/regd.yml [--repair]
    regd reindex --config /etc/regd/regd.yml
    regd serve [CONFIG]

registry:2's spellings work too: the configuration file may be given as the
last argument (`garbage-collect CONFIG`), and `serve CONFIG` runs the daemon.

Garbage collection is safe while the daemon serves pushes (see regd.registry.gc).
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.internet import defer, task
from twisted.python.threadpool import ThreadPool

from regd.config import ConfigError, load_config
from regd.units import parse_duration


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regd")
    commands = parser.add_subparsers(dest="command", required=True)
    gc = commands.add_parser("garbage-collect", help="delete blobs no manifest needs")
    gc.add_argument("--config", "-c", help="the daemon's configuration file")
    gc.add_argument("config_file", nargs="?", metavar="CONFIG", help="the same, as registry:2 spells it")
    gc.add_argument("--dry-run", "-d", action="store_true", help="only list what would be deleted")
    gc.add_argument("--delete-untagged", "-m", action="store_true",
                    help="also delete manifests no tag reaches (index children and referrers are kept)")
    gc.add_argument("--grace", default="1h", help="keep anything used more recently than this (default 1h)")
    fsck = commands.add_parser("fsck", help="verify every blob's digest and every link's target")
    fsck.add_argument("--config", "-c", help="the daemon's configuration file")
    fsck.add_argument("config_file", nargs="?", metavar="CONFIG", help="the same, as a positional argument")
    fsck.add_argument("--repair", action="store_true",
                      help="quarantine corrupt blobs (regd/quarantine) and remove dangling links")
    reindex = commands.add_parser("reindex", help="rebuild the search and web index from storage")
    reindex.add_argument("--config", "-c", help="the daemon's configuration file")
    reindex.add_argument("config_file", nargs="?", metavar="CONFIG", help="the same, as a positional argument")
    serve = commands.add_parser("serve", help="run the daemon (twistd --nodaemon regd --config CONFIG)")
    serve.add_argument("config_file", nargs="?", metavar="CONFIG", help="the daemon's configuration file")
    return parser


def serve(config: str | None, twistd_options: list[str] = ()) -> int:
    """Run the daemon in this process, exactly as the twistd command line would (e.g. --uid/--gid)."""
    from twisted.scripts.twistd import run
    sys.argv = (["twistd", "--nodaemon", "--pidfile=", *twistd_options, "regd"]
                + (["--config", config] if config else []))
    run()
    return 0


async def _with_registry(reactor, options, work):
    """
    Run C{work(registry)} against the configured storage, with a thread pool of
    its own. With a Redis blob-descriptor cache configured, the registry
    forgets removed blobs there too, and refuses to remove one it cannot
    forget (so the cache never points at a removed blob).
    """
    from regd.cache.build import build_blob_cache
    from regd.registry.service import Registry
    from regd.storage.filesystem import FilesystemDriver
    from regd.storage.threads import thread_pool_runner

    config = load_config(options.config, os.environ).config
    pool = ThreadPool(minthreads=1, maxthreads=4, name="regd-tool")
    pool.start()
    cache = None
    try:
        if config.storage.driver == "s3":
            from regd.storage.s3 import S3Driver
            driver = S3Driver(config.storage.s3, reactor)
        else:
            driver = FilesystemDriver(config.storage.filesystem.rootdirectory, thread_pool_runner(reactor, pool))
        # Only runs that remove blobs need the cache (to forget them); a dry run or a check does not.
        removes = (getattr(options, "command", "") == "garbage-collect" and not getattr(options, "dry_run", False)) \
            or getattr(options, "repair", False)
        cache = build_blob_cache(config, driver, reactor, strict=True) if removes else None
        if cache is not None and cache.kind == "redis":
            await cache.backend.wait_connected(max(config.redis.dialtimeout, 2.0))
        return await work(Registry(driver, reactor, cache=cache))
    finally:
        if cache is not None:
            await defer.maybeDeferred(cache.close)
        pool.stop()


async def storage_check(reactor, options) -> int:
    from regd.registry.fsck import StorageCheck
    problems = await _with_registry(reactor, options, lambda registry: StorageCheck(registry, options.repair).run())
    for digest in problems.corrupt_blobs:
        print(f"corrupt blob {digest}")
    for path in problems.bad_links:
        print(f"bad link {path}")
    for path in problems.dangling_links:
        print(f"dangling link {path}")
    for action in problems.repaired:
        print(action)
    print(f"{problems.blobs_checked} blobs and {problems.links_checked} links checked: "
          f"{len(problems.corrupt_blobs)} corrupt blobs, {len(problems.bad_links)} bad links, "
          f"{len(problems.dangling_links)} dangling links")
    if problems.leftovers:
        print(f"{problems.leftovers} links never finished by an interrupted write (harmless, invisible to clients)")
    return 0 if problems.clean or options.repair else 1


async def garbage_collect(reactor, options) -> int:
    from regd.registry.gc import GarbageCollector

    def collect(registry):
        return GarbageCollector(registry, reactor, grace=parse_duration(options.grace),
                                delete_untagged=options.delete_untagged, dry_run=options.dry_run).run()

    report = await _with_registry(reactor, options, collect)
    verb = "would delete" if options.dry_run else "deleted"
    for name, digest in report.manifests_deleted:
        print(f"{verb} manifest {name}@{digest}")
    for digest in report.blobs_deleted:
        print(f"{verb} blob {digest}")
    print(f"{len(report.marked)} blobs marked, {len(report.blobs_deleted)} blobs {verb} "
          f"({report.bytes_freed} bytes), {len(report.manifests_deleted)} manifests {verb}")
    if report.links_pruned:
        print(f"{report.links_pruned} repository links to blobs no longer stored removed")
    if report.untagged_manifests_kept:
        print(f"{len(report.untagged_manifests_kept)} manifests no tag reaches were kept, with their blobs "
              f"(they may still be pulled by digest); --delete-untagged removes them")
    kept = grace_summary(report, options.grace)
    if kept:
        print(kept)
    if report.blobs_rescued or report.manifests_rescued:
        print(f"{len(report.blobs_rescued)} blobs and {len(report.manifests_rescued)} manifests were kept "
              f"because pushes in progress needed them")
    return 0


def grace_summary(report, grace: str) -> str:
    """Why a collection may reclaim less than expected, and how to reclaim the rest now."""
    blobs, manifests = len(report.blobs_kept_by_grace), len(report.manifests_kept_by_grace)
    if not (blobs or manifests):
        return ""
    what = f"{blobs} unreferenced blobs ({report.bytes_kept_by_grace} bytes)"
    if manifests:
        what += f" and {manifests} untagged manifests"
    return (f"{what} kept: used within the grace period ({grace}); to reclaim them now, run again with "
            f"--grace 0s (safe while pushes go on)")


async def rebuild_index(reactor, options) -> int:
    """
    Rebuild the index at index.path (or the default under the root) from
    storage; safe while daemons sharing that file serve. Activity counts and
    known pushers are kept.
    """
    from regd.daemon.tap import index_path
    from regd.index.service import RepositoryIndex
    from regd.storage.threads import thread_pool_runner

    config = load_config(options.config, os.environ).config
    path = index_path(config)

    async def rebuild(registry):
        pool = ThreadPool(minthreads=1, maxthreads=1, name="regd-index")
        pool.start()
        try:
            index = RepositoryIndex(registry.driver, registry.manifests, path, thread_pool_runner(reactor, pool),
                                    reactor, retention=config.index.retention)
            await index.open()
            try:
                count = await index.rebuild()
                totals = await index.totals()
                await index.announce_rebuild()
            finally:
                await index.close()
        finally:
            pool.stop()
        return count, totals

    count, (_, organizations, tags) = await _with_registry(reactor, options, rebuild)
    where = "memory (set index.path to keep it)" if path == ":memory:" else path
    print(f"{count} repositories ({organizations} organizations, {tags} tags) indexed into {where}; "
          f"running instances with another index file rebuild theirs within index.refreshinterval")
    return 0


def main(argv=None) -> int:
    options = _parser().parse_args(argv)
    given = getattr(options, "config", None)
    if given and options.config_file and given != options.config_file:
        print("regd: give the configuration file once (--config or CONFIG)", file=sys.stderr)
        return 2
    options.config = given or options.config_file
    if options.command == "serve":
        return serve(options.config)
    try:
        if options.command == "garbage-collect":
            parse_duration(options.grace)
    except ValueError as e:
        print(f"regd: --grace: {e}", file=sys.stderr)
        return 2
    from regd.storage.interfaces import StorageUnavailable
    try:
        loaded = load_config(options.config, os.environ)
        if loaded.config.storage.driver == "s3":
            from regd.storage.s3client import check_bucket
            check_bucket(loaded.config.storage.s3)  # one line, not a traceback, when S3 cannot be used
    except ConfigError as e:
        print(f"regd: configuration error: {e}", file=sys.stderr)
        return 1
    except StorageUnavailable as e:
        print(f"regd: storage.s3: {e}", file=sys.stderr)
        return 1
    codes = []

    commands = {"garbage-collect": garbage_collect, "fsck": storage_check, "reindex": rebuild_index}

    async def run(reactor):
        codes.append(await commands[options.command](reactor, options))

    async def run_reporting(reactor):
        from regd.cache.interfaces import CacheUnavailable
        try:
            await run(reactor)
        except CacheUnavailable as e:
            print(f"regd: blob descriptor cache: {e}", file=sys.stderr)
            codes.append(1)
        except StorageUnavailable as e:
            print(f"regd: storage: {e}", file=sys.stderr)
            codes.append(1)

    try:
        task.react(lambda reactor: defer.ensureDeferred(run_reporting(reactor)))
    except SystemExit as done:
        if done.code not in (0, None):
            return int(done.code)
    return codes[0] if codes else 1


if __name__ == "__main__":
    sys.exit(main())
