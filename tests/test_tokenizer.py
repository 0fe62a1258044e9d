"""Tokenizer against the real Llama 2 tokenizer.model (which the tests fetch through assets.py), and its error paths."""
import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sentencepiece import SentencePieceProcessor, SentencePieceTrainer

from files import InputError
from tokenizer import Tokenizer

TEXTS = ["Hello world", "Once upon a time, there was a little girl named Lily.", "naïve café: 東京 🦙 <s> 3.14"]


@pytest.fixture(scope="module")
def tok(tokenizer_model: str) -> Tokenizer:
    return Tokenizer(tokenizer_model=tokenizer_model)


def tiny_model(path: Path, **options) -> str:
    """Train a 40-piece sentencepiece model (no byte pieces, so no <0x00>) and write it to `path`."""
    proto = io.BytesIO()
    sentences = ["the quick brown fox jumps over the lazy dog"] * 20
    SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=proto, vocab_size=40, model_type="bpe", minloglevel=2, **options
    )
    path.write_bytes(proto.getvalue())
    return str(path)


def test_llama_vocabulary(tok: Tokenizer):
    assert tok.n_words == 32000
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    assert tok.sp_model.id_to_piece(tok.pad_id) == "<0x00>"


def test_round_trip_and_agrees_with_sentencepiece(tok: Tokenizer, tokenizer_model: str):
    sp = SentencePieceProcessor(model_file=tokenizer_model)
    for text in TEXTS:
        ids = tok.encode(text, bos=False, eos=False)
        assert ids == sp.encode(text)
        assert tok.decode(ids) == text


def test_bos_eos_placement(tok: Tokenizer):
    text = TEXTS[1]
    plain = tok.encode(text, bos=False, eos=False)
    assert tok.encode(text, bos=True, eos=False) == [tok.bos_id] + plain
    assert tok.encode(text, bos=False, eos=True) == plain + [tok.eos_id]
    assert tok.encode(text, bos=True, eos=True) == [tok.bos_id] + plain + [tok.eos_id]
    assert tok.decode(tok.encode(text, bos=True, eos=True)) == text


def test_truncation_happens_before_bos_eos(tok: Tokenizer, tokenizer_model: str):
    text = TEXTS[1]
    full = tok.encode(text, bos=False, eos=False)
    short = Tokenizer(max_len=3, tokenizer_model=tokenizer_model)
    assert len(full) > 3
    assert short.encode(text, bos=True, eos=True) == [tok.bos_id] + full[:3] + [tok.eos_id]
    assert short.encode(text, bos=False, eos=False) == full[:3]
    assert Tokenizer(max_len=len(full), tokenizer_model=tokenizer_model).encode(text, bos=False, eos=False) == full


def test_default_model_is_read_from_the_working_folder_never_fetched(tmp_path: Path, tokenizer_model: str,
                                                                       asset_cache: Path, monkeypatch):
    """Fetching is the entry points' job (assets.ensure): a missing default model is an error, even with a mirror."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINLLAMA_ASSET_MIRROR", str(asset_cache))  # holds tokenizer.model
    with pytest.raises(InputError, match="python assets.py tokenizer.model"):
        Tokenizer()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "tokenizer.model").write_bytes(Path(tokenizer_model).read_bytes())
    assert Tokenizer().n_words == 32000


def test_missing_file_says_how_to_fetch_it(tmp_path: Path):
    missing = tmp_path / "nowhere.model"
    with pytest.raises(InputError, match="python assets.py tokenizer.model") as e:
        Tokenizer(tokenizer_model=str(missing))
    assert str(missing) in str(e.value) and "MINLLAMA_ASSET_MIRROR" in str(e.value)


def test_not_a_sentencepiece_model(tmp_path: Path):
    junk = tmp_path / "junk.model"
    junk.write_text("this is not a protobuf")
    with pytest.raises(InputError, match="junk.model is not a sentencepiece model"):
        Tokenizer(tokenizer_model=str(junk))


@pytest.mark.parametrize("content, error", [
    (None, r"bad\.model is a folder, not a sentencepiece model file"),
    (b"", r"bad\.model is not a sentencepiece model: an empty file"),
    (4000, r"bad\.model is not a sentencepiece model \(truncated or another kind of file\): "),
])
def test_unusable_tokenizer_files_are_one_clear_error(tmp_path: Path, model_path: str, content, error: str):
    bad = tmp_path / "bad.model"
    if content is None:
        bad.mkdir()
    else:
        bad.write_bytes(content if isinstance(content, bytes) else Path(model_path).read_bytes()[:content])
    with pytest.raises(InputError, match=error) as e:
        Tokenizer(tokenizer_model=str(bad))
    assert "\n" not in str(e.value)


def test_pad_falls_back_to_sentencepiece_pad_id(tmp_path: Path):
    tok = Tokenizer(tokenizer_model=tiny_model(tmp_path / "pad.model", pad_id=3))
    assert tok.sp_model.piece_to_id("<0x00>") == tok.sp_model.unk_id()  # the model has no <0x00> piece
    assert tok.pad_id == 3 and tok.sp_model.id_to_piece(3) == "<pad>"


def test_model_without_any_pad_is_an_error(tmp_path: Path):
    with pytest.raises(InputError, match="nopad.model has neither"):
        Tokenizer(tokenizer_model=tiny_model(tmp_path / "nopad.model"))


def test_bad_arguments(tok: Tokenizer, tokenizer_model: str):
    with pytest.raises(ValueError, match="max_len"):
        Tokenizer(max_len=0, tokenizer_model=tokenizer_model)
    with pytest.raises(TypeError, match="expects a str"):
        tok.encode([1, 2, 3], bos=True, eos=False)


@pytest.mark.parametrize("path", ["/dev/fd/987654", "/proc/self/fd/pipe:[4026531840]"])
def test_a_file_descriptor_this_process_lacks_is_not_reported_missing(path: str):
    """`<(…)` gives /dev/fd/63, open only in the command it is written in; resolved (Path.resolve) it becomes
    /proc/PID/fd/pipe:[N], which names nothing: neither is a tokenizer to fetch."""
    with pytest.raises(InputError) as e:
        Tokenizer(tokenizer_model=path)
    assert str(e.value).startswith(f"{path} names a file descriptor this process does not hold: a `<(…)` is open ")
    assert "fetch" not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("content, error", [(b"", "an empty file"), (b"junk", r"\(truncated or another kind")])
def test_a_fifo_tokenizer_says_what_it_held(tmp_path: Path, content: bytes, error: str):
    fifo = tmp_path / "tokenizer.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(content,))
    writer.start()
    with pytest.raises(InputError, match=f"{fifo} is not a sentencepiece model.*{error}"):
        Tokenizer(tokenizer_model=str(fifo))
    writer.join()


def test_undecoded_command_line_bytes_are_read_as_utf8(tok: Tokenizer):
    """Under an ASCII locale (LC_ALL=C, UTF-8 mode off) Python keeps the bytes of `café` in sys.argv as lone
    surrogates; they are decoded as UTF-8, and what is not UTF-8 is one line that shows where."""
    assert tok.encode("caf\udcc3\udca9", bos=True, eos=False) == tok.encode("café", bos=True, eos=False)
    with pytest.raises(InputError) as e:
        tok.encode("abc\udcff", bos=True, eos=False)
    assert str(e.value) == 'the text "abc\\xff" is not valid UTF-8 (invalid start byte at byte 3)'
    with pytest.raises(InputError, match=r'^the text "…x{30}\\xc3…" is not valid UTF-8 \(invalid continuation byte '
                                         r'at byte 40\)$'):
        tok.encode("x" * 40 + "\udcc3(", bos=False, eos=False)
    with pytest.raises(InputError, match=r'^the text "a\\ud800…" holds a lone surrogate \(U\+D800 at character 1\)'):
        tok.encode("a\ud800b", bos=False, eos=False)


def test_an_undecoded_prompt_under_an_ascii_locale(tmp_path: Path, tokenizer_model: str, tok: Tokenizer):
    script = "import sys; from tokenizer import Tokenizer; print(Tokenizer(tokenizer_model=sys.argv[1]).encode(" \
             "sys.argv[2], True, False))"
    env = {"PATH": os.environ["PATH"], "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-c", script, tokenizer_model, "café"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == str(tok.encode("café", True, False)), result.stderr
