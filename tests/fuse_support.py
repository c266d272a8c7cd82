"""What the real-mount tests share: the default policy, the binding under test, and the skip marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ifc.enforce.mount import check_fuse_available

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "default.flow"
FUSE = os.environ.get("IFC_TEST_FUSE", "mfusepy3")  # the binding under test: mfusepy3, mfusepy2 or fusepy

_missing = check_fuse_available() if os.geteuid() == 0 else "not root"
REAL_MOUNTS = [
    pytest.mark.integration,
    pytest.mark.skipif(_missing is not None, reason=f"needs root and FUSE ({_missing})"),
]
