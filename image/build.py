#!/usr/bin/python3
"""
Build regd's container image from the project alone (`make image`).

The base filesystem is Debian 12's Python runtime, extracted from Debian
packages by mmdebstrap (variant `extract`: no maintainer scripts, so no shell,
no perl, no usrmerge); the Python packages pinned in image/requirements.txt
are installed by the host's /usr/bin/python3 (the same Debian Python 3.11)
into a virtual environment that is copied to /opt/regd, with regd's own
sources beside them. The result is a `docker load` tarball of one layer,
written deterministically: sorted entries, every mtime SOURCE_DATE_EPOCH,
owner root (except the data volume), a config whose `created` is that same
time; so the same inputs give the same image ID.

    image/build.py [--output DIR]     prints the path of the tarball

The tarball is cached under DIR (default build/image) by a hash of the inputs:
regd's sources, this directory, setup.py and SOURCE_DATE_EPOCH.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SUITE = "bookworm"
# Debian's Python runtime; apt adds what these depend on.
PACKAGES = ["python3-minimal", "libpython3.11-stdlib"]
PYTHON = "/usr/bin/python3"  # the host's Debian Python: the same 3.11 as the image's
PREFIX = "/opt/regd"
SITE = f"{PREFIX}/lib/python3.11/site-packages"
UID = GID = 1000
DATA = "/var/lib/registry"

# Not needed to run regd: documentation, translations, charset converters,
# the package tools and the parts of the standard library for development.
TRIM = [
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
    "usr/share/bug", "usr/share/dpkg", "usr/share/polkit-1", "usr/lib/x86_64-linux-gnu/gconv",
    "usr/lib/x86_64-linux-gnu/krb5", "usr/libexec/dpkg", "etc/dpkg", "etc/alternatives", "etc/cron.daily",
    "etc/logrotate.d", "var/lib/dpkg", "var/cache", "var/log", "var/lib/apt", "etc/apt", "bin/tar", "sbin",
    "usr/sbin", "usr/lib/mime", "lib/systemd", "usr/lib/tmpfiles.d",
    "usr/lib/python3.11/test", "usr/lib/python3.11/idlelib", "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/ensurepip", "usr/lib/python3.11/turtledemo", "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/distutils", "usr/lib/python3.11/__phello__", "usr/lib/python3.11/unittest/test",
    "usr/lib/python3.11/tkinter", "usr/lib/python3.11/turtle.py", "usr/lib/python3.11/pydoc.py",
]
TRIM_GLOBS = ["usr/bin/dpkg*", "usr/bin/py3*", "usr/bin/pydoc*", "usr/bin/*-config", "usr/lib/python3.11/config-*"]
# From the installed Python packages: the installer and every test suite.
SITE_DROP = {"pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth"}
SITE_DROP_PREFIXES = ("pip-", "setuptools-")
# botocore's API models: the S3 driver signs with botocore and resolves credentials through its
# session (STS and SSO for roles and single sign-on); the other services' models are not needed.
BOTOCORE_MODELS = {"s3", "sts", "sso", "sso-oidc", "signin"}
# Twisted protocols regd never loads (SSH, mail, chat, raw packets) and their plugins.
TWISTED_DROP = ["conch", "mail", "words", "pair", "positioning", "test",
                "plugins/twisted_conch.py", "plugins/twisted_mail.py", "plugins/twisted_words.py",
                "plugins/cred_sshkeys.py", "plugins/twisted_trial.py"]

DEFAULT_CONFIG = """\
# regd in its container image: registry:2's layout. Every key can be
# overridden by a REGISTRY_* environment variable (REGISTRY_HTTP_ADDR=...).
# The full list of keys: etc/regd.yml in regd's sources.
version: 0.1
log:
  fields:
    service: registry
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: false
http:
  addr: :5000
  # docker stop waits 10 s before it kills; requests in progress get 8 s.
  draintimeout: 8s
  headers:
    X-Content-Type-Options: [nosniff]
"""

LAUNCHER = f"""#!{PREFIX}/bin/python -I
# regd's command line inside its container image (regd.container).
import sys
from regd.container import main
sys.exit(main())
"""


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def run(argv, **kwargs) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"image: {' '.join(map(str, argv))} failed:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
    return result.stdout


def project_files() -> list[str]:
    listed = run(["git", "ls-files", "-co", "--exclude-standard", "--", "regd", "twisted/plugins", "image",
                  "setup.py"], cwd=SOURCE).split("\n")
    return sorted(name for name in listed if name and (SOURCE / name).is_file() and "__pycache__" not in name)


def version() -> str:
    return re.search(r'version="([^"]+)"', (SOURCE / "setup.py").read_text()).group(1)


def source_date_epoch() -> int:
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    stamp = subprocess.run(["git", "log", "-1", "--format=%at", "--", "regd", "twisted", "image", "setup.py"],
                           cwd=SOURCE, capture_output=True, text=True).stdout.strip()
    return int(stamp) if stamp else 0


def inputs_hash(files: list[str], epoch: int) -> str:
    digest = hashlib.sha256(f"{epoch}\n{SUITE}\n{PACKAGES}\n".encode())
    for name in files:
        digest.update(name.encode() + b"\0" + (SOURCE / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# -- the parts --------------------------------------------------------------

def debian_base(rootfs: Path, epoch: int) -> list[str]:
    """Debian's Python runtime extracted into rootfs; returns the packages' file names (name_version_arch)."""
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch))
    run(["mmdebstrap", "--quiet", "--variant=extract", "--include=" + ",".join(PACKAGES),
         "--skip=cleanup/apt/cache", SUITE, str(rootfs)], env=env)
    debs = sorted(p.name for p in (rootfs / "var/cache/apt/archives").glob("*.deb"))
    return debs


def python_packages(venv: Path) -> Path:
    """The pinned requirements installed by the host's Debian Python; returns site-packages."""
    run([PYTHON, "-m", "venv", str(venv)])
    run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-cache-dir", "--no-compile",
         "--no-deps", "--disable-pip-version-check", "-r", str(HERE / "requirements.txt")])
    _check_requirements(venv / "bin/python")
    return venv / "lib/python3.11/site-packages"


def _check_requirements(python: Path) -> None:
    """Every install_requires of setup.py is met by the pinned set (a new dependency must be pinned too)."""
    import ast
    tree = ast.parse((SOURCE / "setup.py").read_text())
    wanted = next(ast.literal_eval(k.value) for node in ast.walk(tree) if isinstance(node, ast.Call)
                  for k in node.keywords if k.arg == "install_requires")
    check = ("import sys; from importlib.metadata import version, PackageNotFoundError\n"
             "from packaging.requirements import Requirement\n"
             "for text in sys.argv[1:]:\n"
             "    r = Requirement(text)\n"
             "    try:\n"
             "        ok = r.specifier.contains(version(r.name), prereleases=True)\n"
             "    except PackageNotFoundError:\n"
             "        ok = False\n"
             "    if not ok:\n"
             "        sys.exit(f'image/requirements.txt does not meet setup.py: {text}')\n")
    run([str(python), "-c", check, *wanted])


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def assemble(rootfs: Path, site: Path, files: list[str], debs: list[str]) -> None:
    for name in TRIM:
        remove(rootfs / name)
    for pattern in TRIM_GLOBS:
        for path in rootfs.glob(pattern):
            remove(path)
    for node in (rootfs / "dev").iterdir():  # the engine provides /dev
        remove(node)
    for cache in rootfs.rglob("__pycache__"):
        remove(cache)

    target = rootfs / SITE.lstrip("/")
    target.parent.mkdir(parents=True)
    shutil.copytree(site, target, symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in SITE_DROP or n.startswith(SITE_DROP_PREFIXES)
                                             or n in ("__pycache__", "tests") or (n == "test" and d != str(site))])
    # RECORD lists the build venv's scripts with their (path-dependent) hashes; only pip uninstall reads it.
    for record in target.glob("*.dist-info/RECORD"):
        record.unlink()
    for model in (target / "botocore/data").iterdir():
        if model.is_dir() and model.name not in BOTOCORE_MODELS:
            shutil.rmtree(model)
    for name in TWISTED_DROP:
        remove(target / "twisted" / name)
    for name in files:
        if name.startswith(("regd/", "twisted/plugins/")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SOURCE / name, target / name)
    # Wheels' extension modules carry symbol tables (cryptography's alone 3 MB); Debian strips its own.
    if shutil.which("strip"):
        run(["strip", "--strip-unneeded", *map(str, sorted(target.rglob("*.so")))])
    # PyYAML's compiled parser is not needed: regd reads a few lines of configuration.
    for path in (target / "yaml").glob("_yaml*.so"):
        path.unlink()

    prefix = rootfs / PREFIX.lstrip("/")
    (prefix / "bin").mkdir()
    for name in ("python", "python3"):
        os.symlink("/usr/bin/python3.11", prefix / "bin" / name)
    (prefix / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n")
    (prefix / "lib64").symlink_to("lib")
    local_bin = rootfs / "usr/local/bin"
    local_bin.mkdir(parents=True, exist_ok=True)
    for name in ("regd", "registry", "docker-entrypoint"):
        (local_bin / name).write_text(LAUNCHER)
        (local_bin / name).chmod(0o755)

    etc = rootfs / "etc"
    (etc / "passwd").write_text(f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                f"registry:x:{UID}:{GID}:regd:{DATA}:/usr/sbin/nologin\n"
                                f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (etc / "group").write_text(f"root:x:0:\nregistry:x:{GID}:\nnogroup:x:65534:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    (etc / "docker/registry").mkdir(parents=True)
    (etc / "docker/registry/config.yml").write_text(DEFAULT_CONFIG)
    # Trusted CAs for webhook endpoints and token servers: certifi's bundle where OpenSSL looks.
    (etc / "ssl/certs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(target / "certifi/cacert.pem", etc / "ssl/certs/ca-certificates.crt")
    (rootfs / "usr/lib/ssl").mkdir(parents=True, exist_ok=True)
    remove(rootfs / "usr/lib/ssl/cert.pem")
    os.symlink("/etc/ssl/certs/ca-certificates.crt", rootfs / "usr/lib/ssl/cert.pem")
    remove(rootfs / "usr/lib/ssl/certs")
    os.symlink("/etc/ssl/certs", rootfs / "usr/lib/ssl/certs")
    for name in ("root", DATA.lstrip("/"), "tmp"):
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    share = rootfs / "usr/share/regd"
    share.mkdir(parents=True)
    (share / "debian-packages.txt").write_text("".join(f"{d}\n" for d in debs))

    # The twistd plugin cache, written now: the service user cannot write it at run time.
    run([PYTHON, "-S", "-c", "import sys; sys.path[:0] = [sys.argv[1]]; from twisted.plugin import IPlugin, "
         "getPlugins; import twisted.plugins; assert 'regd' in [getattr(p, 'tapname', '') for p in "
         "getPlugins(IPlugin, twisted.plugins)]", str(target)])
    # Byte code, so that start-up and the health check do not compile; hash-checked, not by mtime.
    run([PYTHON, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
         "-s", str(rootfs), "-p", "/", str(rootfs / "usr/lib/python3.11"), str(target)])
    remove(rootfs / "usr/lib/python3.11/__pycache__/__phello__.cpython-311.pyc")


# -- the docker load tarball -----------------------------------------------

def _layer(rootfs: Path, epoch: int, out) -> None:
    """One layer: sorted entries, fixed times, root's (the data volume: the service user's)."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory, dirs, names in os.walk(rootfs):
            dirs.sort()
            here = Path(directory)
            for name in sorted(dirs + names):
                path = here / name
                arcname = str(path.relative_to(rootfs))
                info = tar.gettarinfo(str(path), arcname)
                info.mtime = epoch
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode &= 0o1777
                info.pax_headers = {}
                if "/" + arcname == DATA:
                    info.uid, info.gid, info.mode = UID, GID, 0o755
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)


def image_config(diff_id: str, epoch: int, labels: dict) -> dict:
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    second = 1_000_000_000
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "Env": ["PATH=/usr/local/bin:/opt/regd/bin:/usr/bin:/bin", "LANG=C.UTF-8",
                    "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
            "Entrypoint": ["/usr/local/bin/docker-entrypoint"],
            "Cmd": ["/etc/docker/registry/config.yml"],
            "ExposedPorts": {"5000/tcp": {}},
            "Volumes": {DATA: {}},
            "WorkingDir": "/",
            "StopSignal": "SIGTERM",
            "Labels": labels,
            "Healthcheck": {"Test": ["CMD", "/usr/local/bin/regd", "healthcheck"], "Interval": 10 * second,
                            "Timeout": 5 * second, "StartPeriod": 10 * second, "Retries": 3},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "make image (image/build.py)"}],
    }


def write_archive(rootfs: Path, epoch: int, labels: dict, tags: list[str], output: Path) -> str:
    with tempfile.TemporaryFile(dir=output.parent) as layer:
        _layer(rootfs, epoch, layer)
        layer.seek(0)
        hasher = hashlib.sha256()
        for block in iter(lambda: layer.read(1 << 20), b""):
            hasher.update(block)
        diff_id = "sha256:" + hasher.hexdigest()
        config = json.dumps(image_config(diff_id, epoch, labels), sort_keys=True, separators=(",", ":")).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        layer_name = hasher.hexdigest() + "/layer.tar"
        manifest = json.dumps([{"Config": config_name, "RepoTags": tags, "Layers": [layer_name]}]).encode()
        partial = output.with_suffix(".partial")
        with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
            def add(name, data=None, fileobj=None, size=0, kind=tarfile.REGTYPE):
                info = tarfile.TarInfo(name)
                info.mtime, info.type, info.mode = epoch, kind, 0o755 if kind == tarfile.DIRTYPE else 0o644
                info.size = len(data) if data is not None else size
                tar.addfile(info, io.BytesIO(data) if data is not None else fileobj)
            add(config_name, config)
            add(hasher.hexdigest(), kind=tarfile.DIRTYPE)
            layer.seek(0, os.SEEK_END)
            size = layer.tell()
            layer.seek(0)
            add(layer_name, fileobj=layer, size=size)
            add("manifest.json", manifest)
        partial.rename(output)
    for older in output.parent.glob("regd-image-*.tar"):
        if older != output:
            older.unlink()
    return config_name[:-5]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(SOURCE / "build/image"), help="where tarballs are kept")
    parser.add_argument("--tag", action="append", help="repository:tag names (default regd:VERSION, regd:latest)")
    options = parser.parse_args()
    output_dir = Path(options.output)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = project_files()
    epoch = source_date_epoch()
    key = inputs_hash(files, epoch)
    output = output_dir / f"regd-image-{key}.tar"
    if output.exists():
        log(f"cached: {output}")
        print(output)
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=output_dir, prefix="work-") as work:
        work = Path(work)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            base = pool.submit(debian_base, work / "rootfs", epoch)
            site = pool.submit(python_packages, work / "venv")
            debs, site_packages = base.result(), site.result()
        log(f"Debian packages and Python packages in {time.monotonic() - started:.0f} s")
        assemble(work / "rootfs", site_packages, files, debs)
        size = int(run(["du", "-sb", str(work / "rootfs")]).split()[0])
        release = version()
        labels = {
            "org.opencontainers.image.title": "regd",
            "org.opencontainers.image.description": "Container image registry daemon (Docker Registry HTTP API V2 / "
                                                    "OCI Distribution 1.1), a drop-in for registry:2",
            "org.opencontainers.image.version": release,
            "org.opencontainers.image.licenses": "Apache-2.0",
            "org.opencontainers.image.source": "https://example.org/regd",
            "org.opencontainers.image.created": datetime.datetime.fromtimestamp(
                epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        tags = options.tag or [f"regd:{release}", "regd:latest"]
        image_id = write_archive(work / "rootfs", epoch, labels, tags, output)
    log(f"{output}: image sha256:{image_id[:12]}, {size / 1e6:.1f} MB uncompressed, "
        f"built in {time.monotonic() - started:.0f} s")
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
