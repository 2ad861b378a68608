# -*- test-case-name: tests.test_container -*-
"""
How regd starts inside its container image (`make image`), so that the image
is a drop-in for registry:2:

- the command forms registry:2's image accepts: no arguments (serve the
  default /etc/docker/registry/config.yml), `CONFIG.yml`, `serve CONFIG`,
  `garbage-collect [options] CONFIG` and any other regd subcommand; anything
  else is executed as given;
- started as root (the default), the storage root is made the `registry`
  user's before any command (so a fresh bind-mounted host directory just works), the daemon reads
  its configuration, certificate and key as root, and twistd then switches to
  that user before serving; other subcommands switch before they run. Started
  with `--user`, nothing is changed and nobody is switched;
- `healthcheck`: GET / on the configured address (the image's HEALTHCHECK),
  with no curl in the image.
"""

from __future__ import annotations

import os
import pwd
import ssl
import sys
from http.client import HTTPConnection, HTTPSConnection

DEFAULT_CONFIG = "/etc/docker/registry/config.yml"
USER = "registry"
SUBCOMMANDS = ("serve", "garbage-collect", "fsck", "reindex", "healthcheck")


def command_line(args: list[str]) -> list[str] | None:
    """
    registry:2's entrypoint forms mapped onto regd's commands; None means
    "not ours: execute it as given".
    """
    if not args:
        return ["serve", DEFAULT_CONFIG]
    first = args[0]
    if first.endswith((".yml", ".yaml")):
        return ["serve"] + args
    if first in ("registry", "regd"):
        return command_line(args[1:]) if len(args) > 1 else ["serve", DEFAULT_CONFIG]
    if first in SUBCOMMANDS or first.startswith("-"):
        return args
    return None


def _account():
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        return None


def own_storage_root(root: str, uid: int, gid: int, say=print) -> None:
    """Give the storage root to the service user, once (only when its top is someone else's)."""
    try:
        os.makedirs(root, exist_ok=True)
        top = os.stat(root)
    except OSError as e:
        say(f"regd: cannot prepare {root}: {e.strerror or e}")
        return
    if (top.st_uid, top.st_gid) == (uid, gid):
        return
    say(f"regd: making {root} owned by {USER} (uid {uid}, gid {gid})")
    try:
        os.chown(root, uid, gid)
        for directory, dirs, files in os.walk(root):
            for name in dirs + files:
                os.lchown(os.path.join(directory, name), uid, gid)
    except OSError as e:
        say(f"regd: cannot change the owner of {root}: {e.strerror or e}")


def _storage_root(config_path: str | None) -> str | None:
    from regd.config import ConfigError, load_config
    try:
        storage = load_config(config_path, os.environ).config.storage
    except ConfigError:
        return None  # the daemon itself reports the error, with its usual one line
    return storage.filesystem.rootdirectory if storage.driver == "filesystem" else None


def _drop_privileges(account) -> None:
    os.setgroups([])
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)
    os.environ["HOME"] = account.pw_dir


def _config_argument(args: list[str]) -> str | None:
    """The configuration file named on a regd command line (--config X, -c X, --config=X or a last CONFIG)."""
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    positional = [a for a in args[1:] if not a.startswith("-")]
    return positional[-1] if positional else None


def _served_config() -> str | None:
    """The configuration file the running daemon (PID 1, started by this module) serves."""
    try:
        with open("/proc/1/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return None
    for i, arg in enumerate(argv):
        if os.path.basename(arg) in ("docker-entrypoint", "regd", "registry"):
            args = command_line(argv[i + 1:])
            if args and args[0] == "serve":
                return _config_argument(args) or DEFAULT_CONFIG
            return None
    return None


def health_request(config) -> tuple[str, int, bool, str]:
    """(host, port, tls, path) of the GET / that tells whether this registry is up."""
    http = config.http
    host = http.host_addr
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    tls = bool(http.tls.certificate or http.tls.letsencrypt)
    return host, http.port, tls, (http.prefix.rstrip("/") + "/") if http.prefix else "/"


def healthcheck(config_path: str | None, timeout: float = 5.0) -> int:
    from regd.config import ConfigError, load_config
    try:
        config = load_config(config_path or _served_config() or DEFAULT_CONFIG, os.environ).config
    except ConfigError as e:
        print(f"unhealthy: configuration error: {e}")
        return 1
    host, port, tls, path = health_request(config)
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # liveness of this process, not the certificate's name
        connection = HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        connection = HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        status = connection.getresponse().status
    except OSError as e:
        print(f"unhealthy: GET {path} on {host}:{port}: {e}")
        return 1
    finally:
        connection.close()
    print(f"GET {path}: {status}")
    return 0 if status == 200 else 1


def main(argv: list[str] | None = None) -> int:
    """`regd` and `registry` inside the image."""
    args = command_line(list(sys.argv[1:] if argv is None else argv))
    if args is None:
        given = sys.argv[1:] if argv is None else argv
        try:
            os.execvp(given[0], given)
        except OSError as e:
            print(f"regd: cannot run {given[0]}: {e.strerror or e} (the image has no shell)", file=sys.stderr)
            return 127
    from regd import cli
    if args[0] == "healthcheck":
        return healthcheck(args[1] if len(args) > 1 else None)
    account = _account() if os.getuid() == 0 else None
    config = _config_argument(args) or os.environ.get("REGISTRY_CONFIGURATION_PATH") or DEFAULT_CONFIG
    if account is not None and not args[0].startswith("-"):
        root = _storage_root(config)
        if root:
            own_storage_root(root, account.pw_uid, account.pw_gid)
    if args[0] == "serve":
        twistd = ["--uid", str(account.pw_uid), "--gid", str(account.pw_gid)] if account is not None else []
        return cli.serve(config, twistd)
    if account is not None:
        _drop_privileges(account)
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
