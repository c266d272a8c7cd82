"""Shared by every test: the user's state directory (where workspaces keep their floated labels) is a
temporary one, so tests neither read labels left by real runs nor leave theirs behind."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_state_dir(tmp_path_factory):
    os.environ["IFC_STATE_DIR"] = str(tmp_path_factory.mktemp("ifc-state"))
    yield
    os.environ.pop("IFC_STATE_DIR", None)
