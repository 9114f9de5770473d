# Shared fixtures of the Python client tests: the mxfp4 command under test (MXFP4_CLI) and a run
# helper that fails the test with the command's stderr.
import os
import subprocess

import pytest


@pytest.fixture(scope="session")
def cli():
    path = os.environ.get("MXFP4_CLI")
    if not path or not os.path.exists(path):
        pytest.fail("MXFP4_CLI must name the built mxfp4 command (ctest sets it)")
    return path


@pytest.fixture
def run(cli):
    def _run(*args, ok=True):
        p = subprocess.run([cli, *map(str, args)], capture_output=True, text=True)
        if ok and p.returncode != 0:
            pytest.fail(f"mxfp4 {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr}")
        return p

    return _run
