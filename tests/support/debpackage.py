"""
Build regd's Debian package from a clean copy of a checkout, then run lintian on it:

    python3 tests/support/debpackage.py CHECKOUT

The copy is made under $TMPDIR; the last two lines printed name the package and lintian's
report. tests/e2e/test_debian_package.py runs this in the background from the session's start
(tests/support/background.py). Standard library only: it runs outside the test process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def copy_checkout(source: Path, tree: Path) -> None:
    """The files git knows and those it does not ignore: what a clean clone plus local edits has."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=source, check=True,
                            capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (source / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, tree / name)


def main(source: Path) -> None:
    build = Path(tempfile.mkdtemp(prefix="deb-"))
    tree = build / "regd"
    copy_checkout(source, tree)
    # dpkg-deb's xz (the package's default) takes 25 s of this machine's two cores for a package
    # whose contents and metadata do not depend on it: the test build uses gzip.
    env = dict(os.environ, DPKG_DEB_COMPRESSOR_TYPE="gzip")
    subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=tree, env=env, check=True, timeout=1200)
    package = next(build.glob("regd_*.deb"))
    # lintian exits 1 when it reports errors (the test reads the report); other codes are its own failures.
    lint = subprocess.run(["lintian", str(package)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TMPDIR=str(build)))
    if lint.returncode not in (0, 1):
        sys.exit(f"lintian failed ({lint.returncode}):\n{lint.stderr[-3000:]}")
    report = build / "lintian.txt"
    report.write_text(lint.stdout)
    print(f"package: {package}\nlintian report: {report}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
