"""
Run every test from a scratch directory: trial's mktemp() makes paths under
the current directory, which must never be the checkout.
"""

import os
import shutil
import tempfile

import pytest


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
