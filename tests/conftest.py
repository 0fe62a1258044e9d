"""Fixtures shared by all tests. The repository root goes on sys.path so tests can `import llama`, `import assets`."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def asset_mirror() -> Path:
    """The local asset mirror: $MINLLAMA_ASSET_MIRROR, else ../shared/assets beside the repository."""
    mirror = Path(os.environ.get("MINLLAMA_ASSET_MIRROR") or REPO.parent / "shared" / "assets")
    if not mirror.is_dir():
        pytest.skip(f"asset mirror not found at {mirror} (set MINLLAMA_ASSET_MIRROR)")
    return mirror
