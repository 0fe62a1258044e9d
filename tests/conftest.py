"""Fixtures shared by all tests. The repository root goes on sys.path so tests can `import llama`, `import assets`."""
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from checkpoint import save_checkpoint  # noqa: E402 (after the path is set)
from config import LlamaConfig  # noqa: E402
from llama import Llama  # noqa: E402


@pytest.fixture(scope="session")
def asset_mirror() -> Path:
    """The local asset mirror: $MINLLAMA_ASSET_MIRROR, else ../shared/assets beside the repository."""
    mirror = Path(os.environ.get("MINLLAMA_ASSET_MIRROR") or REPO.parent / "shared" / "assets")
    if not mirror.is_dir():
        pytest.skip(f"asset mirror not found at {mirror} (set MINLLAMA_ASSET_MIRROR)")
    return mirror


@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> str:
    """A random Llama with the Llama 2 vocabulary, tiny sizes and stories42M's context, in the course's format."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=1024)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, asdict(config), Llama(config).state_dict())
    return str(path)


@pytest.fixture(scope="session")
def tokenizer_model(asset_mirror: Path) -> str:
    return str(asset_mirror / "tokenizer.model")
