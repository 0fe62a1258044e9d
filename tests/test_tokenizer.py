"""Tokenizer against the real Llama 2 tokenizer.model (which the tests fetch through assets.py), and its error paths."""
import io
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
