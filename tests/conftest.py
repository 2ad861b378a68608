"""
Run every test from a scratch directory: trial's mktemp() makes paths under
the current directory, which must never be the checkout.
"""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scratch_cwd(tmp_path_factory):
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("trial"))
    yield
    os.chdir(previous)
