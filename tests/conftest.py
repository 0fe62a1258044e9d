"""Fixtures shared by all tests. The repository root goes on sys.path so tests can `import llama`, `import assets`.

Public files (tokenizer, data, checkpoints) come through assets.py, as they do for the program: from
$MINLLAMA_ASSET_MIRROR when it holds them, else from the repository root when they were put there (as `make fetch`
does), else from the mirror or, without one, their URLs; checked against their sha256, into pytest's cache folder
(`pytest --cache-clear` empties it). A test whose file cannot be had is skipped, and one line at the end says why.
Every test starts from the random state seeded by $MINLLAMA_TEST_SEED (default 0), so the suite can be run under
other seeds to show that no test passes by the luck of one draw.
"""
import os
import random
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import assets  # noqa: E402 (after the path is set)
from checkpoint import save_checkpoint  # noqa: E402
from config import LlamaConfig  # noqa: E402
from llama import Llama  # noqa: E402

SEED_ENV = "MINLLAMA_TEST_SEED"
UNAVAILABLE = "public file unavailable"  # starts the reason of every skip for a missing asset
MIRROR = os.environ.get(assets.MIRROR_ENV)  # as the run started
_unavailable: dict[str, str] = {}  # asset name → why it could not be fetched, so each is tried once per session


def seed_from_env() -> int:
    """$MINLLAMA_TEST_SEED as an integer, 0 when unset."""
    value = os.environ.get(SEED_ENV, "0")
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"{SEED_ENV} must be an integer, got {value!r}") from None


def pytest_configure(config: pytest.Config) -> None:
    seed_from_env()  # a bad seed stops the run before any test


def pytest_report_header(config: pytest.Config) -> str:
    return f"minllama: {SEED_ENV}={seed_from_env()}"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """One line explaining the skips for missing public files; the seed, when a test failed."""
    reasons = [r.longrepr[2] for r in terminalreporter.stats.get("skipped", []) if isinstance(r.longrepr, tuple)]
    # the names come from the reports, not from _unavailable: under pytest-xdist the workers hold that
    names = {m.group(1) for m in (re.search(f"{UNAVAILABLE}: ([^:]+):", reason) for reason in reasons) if m}
    skipped = [reason for reason in reasons if UNAVAILABLE in reason]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} skipped: public files could not be fetched ({', '.join(sorted(names))}); "
            f"run online, put them in the repository root {REPO}, or set {assets.MIRROR_ENV} to a folder that "
            "holds them (README, Offline)")
    if exitstatus == pytest.ExitCode.TESTS_FAILED:
        terminalreporter.write_line(f"the tests ran with {SEED_ENV}={seed_from_env()}")


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Seed Python's, NumPy's and torch's global generators from $MINLLAMA_TEST_SEED before every test."""
    seed = seed_from_env()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mirror_for(name: str, root: Path = REPO) -> str | None:
    """The folder the tests copy the public file `name` from: $MINLLAMA_ASSET_MIRROR when it holds the file, else
    `root` when the file is there, else the mirror, or None for the file's URLs."""
    if MIRROR and (Path(MIRROR) / name).is_file():
        return MIRROR
    return str(root) if (root / name).is_file() else MIRROR


@pytest.fixture(scope="session")
def asset_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where the tests keep public files under their relative names, laid out like a mirror."""
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    return cache.mkdir("assets") if cache is not None else tmp_path_factory.mktemp("assets")


@pytest.fixture(scope="session")
def asset(asset_cache: Path) -> Callable[[str], Path]:
    """asset(name): the path of the known asset `name` in asset_cache, fetched through assets.ensure if missing;
    the calling test is skipped when it cannot be fetched."""

    def get(name: str) -> Path:
        if name not in assets.ASSETS:
            raise KeyError(f"{name} is not a known asset ({', '.join(assets.ASSETS)})")
        if name not in _unavailable:
            try:
                with pytest.MonkeyPatch.context() as env:  # whatever the calling test did to the variable
                    if mirror := mirror_for(name):
                        env.setenv(assets.MIRROR_ENV, mirror)
                    else:
                        env.delenv(assets.MIRROR_ENV, raising=False)
                    return assets.ensure(asset_cache / name)
            except assets.InputError as e:
                _unavailable[name] = " ".join(line.strip() for line in str(e).splitlines()[:2])
        pytest.skip(f"{UNAVAILABLE}: {name}: {_unavailable[name]}")

    return get


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random Llama with the Llama 2 vocabulary, tiny sizes and stories42M's context, in the course's format; its
    weights are drawn from $MINLLAMA_TEST_SEED."""
    torch.manual_seed(seed_from_env())
    config = LlamaConfig(vocab_size=32000, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=1024)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, asdict(config), Llama(config).state_dict())
    return str(path)


@pytest.fixture(scope="session")
def tokenizer_model(asset: Callable[[str], Path]) -> str:
    return str(asset("tokenizer.model"))
