"""
Run every test from a scratch directory: trial's mktemp() makes paths under
the current directory, which must never be the checkout. Start the slow builds
some end-to-end tests need with the session, and run those tests last.
"""

import os
import shutil
import tempfile

import pytest

from tests.support import background


def pytest_configure(config):
    config.regd_builds = background.configure(getattr(config, "workerinput", {}).get("regd_builds"))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist: a worker learns where the main process's builds write."""
    node.workerinput["regd_builds"] = node.config.regd_builds


def pytest_collection_modifyitems(items):
    """The tests that wait for a build started in the background go last (the package's last of all)."""
    rank = {name: place for place, name in enumerate(background.NEEDED_BY.values(), start=1)}
    items.sort(key=lambda item: rank.get(background.needed_by(item.path), 0))


def pytest_collection_finish(session):
    if not hasattr(session.config, "workerinput") and not session.config.option.collectonly:
        background.start_for(item.nodeid for item in session.items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """pytest-xdist: the main process starts the builds the workers' tests need."""
    background.start_for(ids)


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):
        background.finish()


@pytest.fixture(autouse=True, scope="session")
def _scratch_tempdir(tmp_path_factory):
    """
    What the tests and their helpers make with tempfile (the configs and logs of the daemons they
    start, moto's and dockerd's directories) goes under one directory, removed when the session
    ends: a run leaves nothing behind in the system's temp directory. pytest's own base directory is
    settled first and stays where it was.
    """
    tmp_path_factory.getbasetemp()
    previous = tempfile.tempdir
    tempfile.tempdir = base = tempfile.mkdtemp(prefix="regd-tests-")
    yield
    tempfile.tempdir = previous
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _scratch_cwd(tmp_path_factory):
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("trial"))
    yield
    os.chdir(previous)
