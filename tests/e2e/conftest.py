"""Shared fixtures for the end-to-end tests: where the quiver binary and ../shared live."""
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def quiver_bin():
    path = os.environ.get("QV_BIN") or str(ROOT / "build" / "asan" / "quiver")
    if not os.path.exists(path):
        pytest.fail(f"quiver binary not found at {path}: build first (scripts/build asan)")
    return path


@pytest.fixture(scope="session")
def shared_dir():
    return pathlib.Path(os.environ.get("QV_SHARED_DIR") or (ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def stories_dir(shared_dir):
    d = shared_dir / "models" / "stories260K"
    if not (d / "config.json").exists():
        pytest.skip(f"stories260K not found at {d}")
    return d
