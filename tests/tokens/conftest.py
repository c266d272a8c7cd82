from __future__ import annotations

import pytest
from caps_testkit import AUDIENCE, HOST

import caps


@pytest.fixture
def verifier() -> caps.Verifier:
    return caps.Verifier([HOST.public], audience=AUDIENCE)
