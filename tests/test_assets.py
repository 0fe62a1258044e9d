"""Tests for assets.py, against an HTTP server on 127.0.0.1 and temporary mirrors; the real table against the real
files as conftest's asset fixture fetches them (from the mirror, or online)."""
import functools
import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import assets
from assets import Asset
from files import InputError

REPO = Path(__file__).resolve().parent.parent
BODY = b"hello, minllama\n" * 1000
WITHOUT_PUBLIC_FILES = (".git", ".venv*", ".pytest_cache", "__pycache__", "data", "*.model", "*.data", "*.npy", "*.bin",
                        "*.pt")  # a copy of the checkout as a fresh clone has it
SHA = hashlib.sha256(BODY).hexdigest()


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a directory; /truncated promises more bytes than it sends, like a dropped connection."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path != "/truncated":
            return super().do_GET()
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY[:100])
        self.close_connection = True


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """Base URL of a local server whose /hello.txt holds BODY."""
    root = tmp_path_factory.mktemp("www")
    (root / "hello.txt").write_bytes(BODY)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hello.txt"


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch):
    """CI sets the mirror variable; these tests choose for themselves."""
    monkeypatch.delenv(assets.MIRROR_ENV, raising=False)


def add_asset(monkeypatch, *urls: str, sha256: str | None = SHA, name: str = "data/hello.txt") -> Asset:
    """Register a test asset in the asset table for the duration of one test."""
    asset = Asset(name, urls, sha256, len(BODY))
    monkeypatch.setitem(assets.ASSETS, name, asset)
    return asset


def test_download_lands_verified_without_temp_files(tmp_path, monkeypatch, server):
    add_asset(monkeypatch, f"{server}/hello.txt")
    path = assets.ensure(tmp_path / "data" / "hello.txt")
    assert path == tmp_path / "data" / "hello.txt"
    assert path.read_bytes() == BODY
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["hello.txt"]


def test_urls_are_tried_in_order(tmp_path, monkeypatch, server):
    add_asset(monkeypatch, f"{server}/missing.txt", f"{server}/hello.txt")
    assert assets.ensure(tmp_path / "data" / "hello.txt").read_bytes() == BODY


@pytest.mark.parametrize("case", ["hash", "404", "unreachable", "truncated"])
def test_failed_download_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch, server, closed_url, case):
    url, sha, why = {
        "hash": (f"{server}/hello.txt", "0" * 64, "sha256 mismatch"),
        "404": (f"{server}/missing.txt", SHA, "404"),
        "unreachable": (closed_url, SHA, "refused"),
        "truncated": (f"{server}/truncated", None, f"got 100 of {len(BODY)} bytes"),
    }[case]
    add_asset(monkeypatch, url, sha256=sha)
    dest = tmp_path / "data" / "hello.txt"
    with pytest.raises(InputError) as e:
        assets.ensure(dest)
    message = str(e.value)
    assert url in message and why in message and str(dest) in message
    assert list(tmp_path.iterdir()) == []  # not even the folder made for it


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch, server):
    class Interrupt(assets.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    add_asset(monkeypatch, f"{server}/hello.txt")
    monkeypatch.setattr(assets, "tqdm", Interrupt)
    with pytest.raises(KeyboardInterrupt):
        assets.ensure(tmp_path / "data" / "hello.txt")
    assert list(tmp_path.iterdir()) == []  # not even the folder made for it


def test_mirror_is_copied_and_verified(tmp_path, monkeypatch, closed_url):
    mirror = tmp_path / "mirror"
    (mirror / "data").mkdir(parents=True)
    (mirror / "data" / "hello.txt").write_bytes(BODY)
    monkeypatch.setenv(assets.MIRROR_ENV, str(mirror))
    add_asset(monkeypatch, closed_url)  # the network must not be used
    assert assets.ensure(tmp_path / "out" / "data" / "hello.txt").read_bytes() == BODY

    (mirror / "data" / "hello.txt").write_bytes(BODY + b"tampered")
    with pytest.raises(InputError, match="sha256 mismatch"):
        assets.ensure(tmp_path / "again" / "data" / "hello.txt")
    assert not (tmp_path / "again").exists()  # no folder for a file that did not arrive


def test_file_missing_from_mirror_names_mirror_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.MIRROR_ENV, str(tmp_path))
    with pytest.raises(InputError) as e:
        assets.ensure(tmp_path / "out" / "stories42M.pt")
    message = str(e.value)
    assert str(tmp_path / "stories42M.pt") in message
    assert "https://www.cs.cmu.edu/~vijayv/stories42M.pt" in message


def test_existing_file_is_returned_untouched(tmp_path, monkeypatch, closed_url):
    add_asset(monkeypatch, closed_url, name="tokenizer.model")
    path = tmp_path / "tokenizer.model"
    path.write_bytes(b"not checked")
    assert assets.ensure(path) == path
    assert path.read_bytes() == b"not checked"


def test_unknown_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(InputError, match="nope.bin"):
        assets.ensure(tmp_path / "nope.bin")


def test_find_matches_whole_path_components():
    assert assets.find("/x/y/tokenizer.model").name == "tokenizer.model"
    assert assets.find("data/sst-train.txt").name == "data/sst-train.txt"
    assert assets.find("/x/mytokenizer.model") is None
    assert assets.find("other/sst-train.txt") is None


def test_table_covers_the_small_assets_with_hashes():
    small = [a for a in assets.ASSETS.values() if not a.large]
    assert len(small) == 14 and all(a.sha256 and a.urls and a.size for a in small)
    assert [a.name for a in assets.ASSETS.values() if a.large] == ["stories42M.pt", "stories260K.bin"]
    stories260k = assets.ASSETS["stories260K.bin"]
    assert stories260k.sha256 == "9414d5a285453a7eab631713d171753232c978f6f97654211469aff8be93c8d6"
    assert stories260k.urls == ("https://raw.githubusercontent.com/plctlab/rvspoc-s2311-llama2/"
                                "2fa3f650cf1dc5a21e11c00a9c688be86947b061/stories260K.bin",)
    run_c = assets.ASSETS["llama2c/run.c"]  # bench.py's peer, at the llama2.c commit it was measured at
    assert run_c.urls == ("https://raw.githubusercontent.com/karpathy/llama2.c/"
                          "350e04fe35433e6d2941dce5a1f53308f87058eb/run.c",)
    assert run_c.sha256 == "9c4f2d5c6ae01b71726d1cc37530d71e60bff0ec7cc012565f16a43c1ca658bd"


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "assets.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_fetches_all_small_assets_from_mirror(tmp_path, asset, asset_cache):
    """The real table against the real files: every small one arrives and matches its recorded sha256, as does
    stories260K.bin when named."""
    for name in assets.ASSETS:
        if name != "stories42M.pt":  # 167 MB: its sources are checked by hand
            asset(name)  # in asset_cache, which then serves as the mirror
    env = {"PATH": "/usr/bin:/bin", assets.MIRROR_ENV: str(asset_cache)}
    result = cli(cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    fetched = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert fetched == sorted(a.name for a in assets.ASSETS.values() if not a.large)
    listing = cli("--list", cwd=tmp_path, env=env).stdout
    assert all(f"{name} " in listing for name in assets.ASSETS)
    assert listing.count("present") == 14 and listing.count("missing") == 2
    result = cli("stories260K.bin", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stories260K.bin").read_bytes() == asset("stories260K.bin").read_bytes()


def test_cli_failures_exit_nonzero(tmp_path):
    env = {"PATH": "/usr/bin:/bin", assets.MIRROR_ENV: str(tmp_path)}
    result = cli("stories42M.pt", cwd=tmp_path, env=env)
    assert result.returncode == 1 and "stories42M.pt" in result.stderr and "by hand" in result.stderr
    result = cli("no-such-asset", cwd=tmp_path, env=env)
    assert result.returncode == 2 and "no-such-asset" in result.stderr


def test_skips_for_missing_files_are_explained_in_one_line(tmp_path):
    """conftest's summary names the files that could not be had, read from the skip reports (which pytest-xdist
    sends back from its workers too) and says how to get them."""
    (tmp_path / "empty").mkdir()
    checkout = tmp_path / "checkout"  # without the public files that `make generate` or `make fetch` put in the root
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(*WITHOUT_PUBLIC_FILES))
    env = {**os.environ, assets.MIRROR_ENV: str(tmp_path / "empty")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "tests/test_stories42M.py"], cwd=checkout, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout
    summary = [line for line in result.stdout.splitlines() if "could not be fetched" in line]
    assert summary == [f"3 skipped: public files could not be fetched (stories42M.pt, tokenizer.model); run online, "
                       f"put them in the repository root {checkout}, or set {assets.MIRROR_ENV} to a folder that "
                       "holds them (README, Offline)"], result.stdout


def test_the_tests_find_public_files_in_the_repository_root(tmp_path: Path, asset):
    """A checkout whose root holds tokenizer.model (put there by hand, or by `make fetch`) runs the tests that need
    it offline, without a mirror: they are not skipped."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(*WITHOUT_PUBLIC_FILES))
    shutil.copy(asset("tokenizer.model"), checkout)
    env = {name: value for name, value in os.environ.items() if name != assets.MIRROR_ENV}
    env |= {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}  # offline
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_tokenizer.py",
                             "-k", "llama_vocabulary or round_trip"], cwd=checkout, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "2 passed" in result.stdout and "skipped" not in result.stdout, result.stdout


@pytest.mark.parametrize("make, kind", [(os.mkfifo, "a FIFO"), (os.mkdir, "a folder")])
def test_a_mirror_entry_that_is_not_a_file_is_one_line_and_leaves_nothing(tmp_path, make, kind):
    """A FIFO in the mirror hung the copy (opened before it was looked at) and left a .part file when killed."""
    mirror, work = tmp_path / "mirror", tmp_path / "work"
    mirror.mkdir(), work.mkdir()
    make(mirror / "tokenizer.model")
    env = {"PATH": "/usr/bin:/bin", assets.MIRROR_ENV: str(mirror)}
    try:
        result = cli("tokenizer.model", cwd=work, env=env, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the copy from the mirror hung, leaving {sorted(p.name for p in work.iterdir())}")
    assert result.returncode == 1 and list(work.iterdir()) == []
    assert result.stderr == (f"error: {mirror / 'tokenizer.model'} is {kind}, not a file: the mirror "
                             f"{assets.MIRROR_ENV}={mirror} must hold tokenizer.model as a file\n")


def test_a_file_descriptor_this_process_lacks_is_said_so():
    """/dev/fd/63 of a `<(…)` given to another command is neither missing nor an asset to fetch."""
    with pytest.raises(InputError, match=r"^/dev/fd/987654 names a file descriptor this process does not hold"):
        assets.ensure("/dev/fd/987654")
