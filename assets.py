"""Every public file minllama needs, and how to fetch one that is missing.

`ensure("data/sst-train.txt")` returns the path, downloading the file first if it is not there yet. Downloads go to a
temporary file beside the target, are checked against a known sha256, and only then renamed into place, so a file at
the final path is always complete. For machines without internet, set MINLLAMA_ASSET_MIRROR=DIR to copy the files from
DIR/<name> instead (same checks). From the command line: `python assets.py [--list | --all | NAME ...]`.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import stat
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

import files
from files import InputError

MIRROR_ENV = "MINLLAMA_ASSET_MIRROR"
_COURSE = "https://raw.githubusercontent.com/neubig/minllama-assignment/master/"
_LLAMA2C_COMMIT = "350e04fe35433e6d2941dce5a1f53308f87058eb"


@dataclass(frozen=True)
class Asset:
    """One public file: its path relative to the repository root, where to get it, and how to check it."""

    name: str
    urls: tuple[str, ...]
    sha256: str | None = None  # None: not verified
    size: int | None = None  # bytes, for the progress bar when the server does not say
    large: bool = False  # left out of `python assets.py` unless --all


ASSETS: dict[str, Asset] = {a.name: a for a in [
    Asset("tokenizer.model", ("https://raw.githubusercontent.com/karpathy/llama2.c/master/tokenizer.model",),
          "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347", 499723),
    Asset("sanity_check.data", (_COURSE + "sanity_check.data",),
          "34f7c763a3bb025940029bd970594e985bf69b7ed6e693a8f5cccbef0cee55b0", 289851),
    # the references of the course's rope_test.py and optimizer_test.py, which ours compare against too
    Asset("rotary_embedding_actual.data", (_COURSE + "rotary_embedding_actual.data",),
          "57b5f9defc9489955829a935d972b85a5fa69f482c7aabdd496e24ffc1b082ee", 1063),
    Asset("optimizer_test.npy", (_COURSE + "optimizer_test.npy",),
          "77b817e0dce16a9bc8d3a6bcb88035db68f7d783dc8a565737581fadd05db815", 152),
    *(Asset(f"data/{name}", (_COURSE + f"data/{name}",), sha256, size) for name, sha256, size in [
        ("sst-train.txt", "7aeac81f2a387f2ce7fab98ed8f40ef85cc9c8ad11bcbb63b122e95665cb1f35", 936994),
        ("sst-dev.txt", "11963c76cd073e68006da0390620aadf5a4b8f775e2f900e92a50b3002e39b9b", 121643),
        ("sst-test.txt", "bdcc8352d37bdc82113e4a4dd887b824144201539d5a1e49be566232d306a4ba", 242474),
        ("sst-label-mapping.json", "831e6914e25d9b9eb56ff9095b3f035bdaf1b9568d385a70ef481c82af0382b3", 49),
        ("cfimdb-train.txt", "278e200499d1d68a1a9d80e3947a2203cc97130632d8a53f2b9c11de9cb6c699", 1629241),
        ("cfimdb-dev.txt", "b38f0c095c4624e85927116728140e96d0221969b34146f65eae5b5bb24752b8", 239671),
        ("cfimdb-test.txt", "8ad2f6da7bfb0e8fc36cf89eda47c574cc9c35d6347e665f31bc904d9ecfe0a7", 465946),
        ("cfimdb-label-mapping.json", "afeac43f5a5fe8758469078418519df4c8503c2e30e2fcf6c61464fce3d44a36", 16),
    ]),
    # llama2.c's C inference (MIT licence) and its vocabulary in run.c's format, at a fixed commit: bench.py's peer
    *(Asset(f"llama2c/{name}", (f"https://raw.githubusercontent.com/karpathy/llama2.c/{_LLAMA2C_COMMIT}/{name}",),
            sha256, size) for name, sha256, size in [
        ("run.c", "9c4f2d5c6ae01b71726d1cc37530d71e60bff0ec7cc012565f16a43c1ca658bd", 38545),
        ("tokenizer.bin", "50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361", 433869),
    ]),
    # The two sources are different files (course vs llama2.c parameter names), so no single hash fits both.
    Asset("stories42M.pt", ("https://www.cs.cmu.edu/~vijayv/stories42M.pt",
                            "https://huggingface.co/karpathy/tinyllamas/resolve/main/stories42M.pt"), large=True),
    # A trained llama2.c model (legacy .bin export, 512-piece vocabulary) that the tests load; a public copy at a
    # fixed commit, which may differ from the file of the same name on the Hugging Face hub.
    Asset("stories260K.bin", ("https://raw.githubusercontent.com/plctlab/rvspoc-s2311-llama2/"
                              "2fa3f650cf1dc5a21e11c00a9c688be86947b061/stories260K.bin",),
          "9414d5a285453a7eab631713d171753232c978f6f97654211469aff8be93c8d6", 1056540, large=True),
]}


# The course's skeleton and helper files at a pinned commit (MIT licence, its LICENSE): what a student fills in and
# runs `python check.py --impl DIR` on. Fetched into a folder the student names (`check.py --start DIR`), never into
# the repository and never by `python assets.py`; the mirror serves them from its folder course/.
_SKELETON_COMMIT = "2951cddba218b7ddfe69295b77ad51a05107d384"
SKELETON: dict[str, Asset] = {name: Asset(
    f"course/{name}", (f"https://raw.githubusercontent.com/neubig/minllama-assignment/{_SKELETON_COMMIT}/{name}",),
    sha256, size) for name, sha256, size in [
    ("LICENSE", "e87b912002f04cdfa837eaf7f70548ab79b9cb62a285495edf575f3da875aec4", 1063),
    ("base_llama.py", "549664538110f9e9291b230078631300af3ca81b1808d1b38d18d99156cd93e1", 924),
    ("classifier.py", "e772251d38e08ad795d2616ce93f3db48500f04b74f7c2ea55556bed9ad08b81", 2398),
    ("config.py", "bd3648e71a0aa2b6347a13809a55bfdfac611445a4182626fd54db40bed6a4dd", 8443),
    ("llama.py", "978b51175ec8d8b81d0a586937ab78bd58e0bcbb84fe086a167aadc5278f14d6", 14006),
    ("optimizer.py", "5a90689d8c2e966be4d78c2553b40232e84b11db7d124b5581911d3bd664e0b4", 2239),
    ("optimizer_test.py", "78c5a0d4cb8b9634d2369bcc783ecb715c541d8828d01e23b381cf2d5bd87e5e", 836),
    ("rope.py", "28084116ba98b627e3f9aec56c506012a0e8a1f237dba7ea67893546d6bb158e", 3144),
    ("rope_test.py", "f9c36b2f437961103ee29233b7f6c4d440f176d2b115416b398de93e82061549", 1203),
    ("run_llama.py", "58676c3b92371975fc099a9a1048f40267417b871e9c4689900d0a119cd3ce3e", 13677),
    ("sanity_check.py", "46b64be77a0cd69feca8bb1732a7f00d03c7ac35f8d25f30d19f6e06c0e398f2", 726),
    ("setup.sh", "b4b0786f9b6a47514a43c71c9b40204d0afc118999cc4f877b18bf49d14274e2", 719),
    ("structure.md", "0f7d08a9cb68f46054a1ba748320f9147f464eca088be263f7037ed18ca3d60f", 6269),
    ("tokenizer.py", "d2702791561895de0f36f08805e297b5fe534aaae9d24391504238e8323433ad", 3100),
    ("utils.py", "43dcc02cb4f2efadf952147bc4868704c4c80c66b135585850dbf9691541108a", 11966),
]}


def fetch_skeleton(folder: str | os.PathLike) -> list[str]:
    """Fetch the course's skeleton files (SKELETON) that `folder` does not hold yet into it; return their names.
    Files already there are the student's work and are left as they are."""
    missing = [name for name in SKELETON if not os.path.lexists(Path(folder) / name)]  # a link is theirs too
    for name in missing:
        fetch(SKELETON[name], Path(folder) / name)
    return missing


def find(path: str | os.PathLike) -> Asset | None:
    """The known asset whose relative name `path` ends with (whole path components only), or None."""
    parts = Path(path).parts
    for asset in ASSETS.values():
        name = Path(asset.name).parts
        if parts[-len(name):] == name:
            return asset
    return None


def unheld_descriptor(path: str | os.PathLike) -> str | None:
    """Why `path`, which does not exist, cannot be had, when it names a file descriptor (/dev/fd/N, /proc/PID/fd/…):
    no file is missing there, but a pipe this process was not given; None for any other path."""
    if not re.match(r"/(dev|proc/[^/]+)/fd/", os.path.abspath(path)):
        return None
    return (f"{os.fspath(path)} names a file descriptor this process does not hold: a `<(…)` is open only in the "
            "command it is written in, and its path, once resolved or handed to another process, names nothing; "
            "give the file's own path")


def ensure(path: str | os.PathLike) -> Path:
    """Return `path`, fetching it first if it is missing and is a known asset. Raise InputError otherwise, and for a
    URL or a link to a missing file, which is the user's to mend, not to be replaced."""
    if "://" in os.fspath(path):
        raise InputError(f"{os.fspath(path)}: a URL is not a path: download the file and give its path")
    path = Path(path)
    if path.exists():
        return path
    if path.is_symlink():
        raise InputError(f"{path} is a link to {os.readlink(path)}, which does not exist: mend or remove the "
                                "link")
    if problem := unheld_descriptor(path):
        raise InputError(problem)
    asset = find(path)
    if asset is None:
        raise InputError(f"{path} does not exist, and it is not a known asset ({', '.join(ASSETS)})")
    fetch(asset, path)
    return path


def fetch(asset: Asset, dest: Path) -> None:
    """Download `asset` to `dest` from its URLs in order, or copy it from the mirror; raise InputError on failure."""
    mirror = os.environ.get(MIRROR_ENV)
    sources: list[str | Path] = [mirror_entry(mirror, asset)] if mirror else list(asset.urls)
    failures = []
    for source in sources:
        try:
            _copy(source, dest, asset)
            return
        except (OSError, ValueError, http.client.HTTPException, InputError) as e:  # HTTPError, URLError: OSErrors
            failures.append(f"  {source}: {e}")
    where = f"the mirror {MIRROR_ENV}={mirror}" if mirror else f"any URL (or set {MIRROR_ENV} to a folder that has it)"
    raise InputError(f"could not fetch {asset.name} from {where}:\n" + "\n".join(failures) +
                     f"\nDownload it by hand from {' or '.join(asset.urls)} and put it at {dest.absolute()}")


def mirror_entry(mirror: str, asset: Asset) -> Path:
    """The mirror's copy of `asset`. One that is there but is not a regular file is an InputError naming it, before
    it is opened: a FIFO would hang the copy until something wrote to it."""
    entry = Path(mirror) / asset.name
    try:
        mode = entry.stat().st_mode
    except OSError:
        return entry  # missing or unreadable: the copy says so, with the URLs to fetch it from by hand
    if not stat.S_ISREG(mode):
        raise InputError(f"{entry} is {files.kind(mode)}, not a file: the mirror {MIRROR_ENV}={mirror} must hold "
                         f"{asset.name} as a file")
    return entry


def _open(source: str | Path) -> tuple[BinaryIO, int | None]:
    """An open binary stream for a URL or a local file, and its length in bytes when known."""
    if isinstance(source, Path):
        return open(source, "rb"), source.stat().st_size
    response = urllib.request.urlopen(source, timeout=60)
    length = response.headers.get("Content-Length")
    return response, int(length) if length else None


def _copy(source: str | Path, dest: Path, asset: Asset) -> None:
    """Copy `source` to a temporary file beside `dest`, check its length and sha256, then rename it to `dest`. The
    folders of `dest` that are missing are made for it, and removed again when it does not arrive."""
    made = files.make_folders(dest.parent)

    def copy(out: BinaryIO) -> None:
        stream, length = _open(source)
        digest, received = hashlib.sha256(), 0
        with stream, tqdm(total=length or asset.size, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=asset.name) as bar:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if length is not None and received != length:
            raise ValueError(f"incomplete download: got {received} of {length} bytes")
        if asset.sha256 is not None and digest.hexdigest() != asset.sha256:
            raise ValueError(f"sha256 mismatch: expected {asset.sha256}, got {digest.hexdigest()}")
    try:
        files.write_atomically(dest, copy, suffix="part")
    except BaseException:
        files.remove_folders(made)
        raise


def main(argv: list[str] | None = None) -> int:
    """Fetch the named assets (default: all but the large ones) into the current directory."""
    parser = argparse.ArgumentParser(description="Fetch the public files minllama needs into the current directory, "
                                     f"from their URLs, or from the folder ${MIRROR_ENV} when it is set.",
                                     allow_abbrev=False)
    parser.add_argument("names", nargs="*", metavar="NAME", help="The assets to fetch (default: all small ones).")
    parser.add_argument("--all", action="store_true",
                        help="Also fetch the large ones (the checkpoints stories42M.pt and stories260K.bin).")
    parser.add_argument("--list", action="store_true",
                        help="List the known assets, whether each is present, and where it comes from; fetch none.")
    args = parser.parse_args(argv)
    if args.list:
        for a in ASSETS.values():
            size = f"{a.size:>9,}" if a.size else "    large" if a.large else "        ?"
            print(f"{a.name:32} {size}  {'present' if Path(a.name).exists() else 'missing'}  {a.urls[0]}")
        return 0
    if unknown := [n for n in args.names if n not in ASSETS]:
        parser.error(f"unknown asset(s) {', '.join(unknown)}; known: {', '.join(ASSETS)}")
    for name in args.names or [n for n, a in ASSETS.items() if args.all or not a.large]:
        ensure(name)
    return 0


if __name__ == "__main__":
    files.cli(main)
