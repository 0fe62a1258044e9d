"""The Llama 2 tokenizer: a sentencepiece BPE model of 32000 pieces, read from `tokenizer.model`."""
from sentencepiece import SentencePieceProcessor

import assets
import files
from config import DEFAULT_TOKENIZER
from files import InputError

PAD_PIECE = "<0x00>"  # Llama 2 defines no pad token; the course pads with the byte piece for NUL (id 3)


class Tokenizer:
    """Turns text into piece ids and back.

    `max_len` caps the number of text pieces; BOS/EOS are added after the cap, so an encoding can be up to
    max_len + 2 ids long. Without `tokenizer_model` the default `tokenizer.model` is used. The model file is read by
    files.read (a FIFO works too); a missing one is an InputError: fetching one is the caller's job (assets.ensure).
    Text that is not valid UTF-8 cannot be encoded (`utf8_text`).
    """

    def __init__(self, max_len: int | None = None, tokenizer_model: str | None = None):
        if max_len is not None and max_len <= 0:
            raise ValueError(f"max_len must be positive or None, got {max_len}")
        path = DEFAULT_TOKENIZER if tokenizer_model is None else tokenizer_model
        data, _ = files.read(path, "a sentencepiece model file", missing=assets.unheld_descriptor(path) or (
            f"tokenizer model {path} not found; fetch the Llama 2 tokenizer with `python assets.py "
            f"{DEFAULT_TOKENIZER}` (set MINLLAMA_ASSET_MIRROR to copy it from a local mirror)"))
        if not data:
            raise InputError(f"{path} is not a sentencepiece model: an empty file")
        try:
            self.sp_model = SentencePieceProcessor(model_proto=data)
        except RuntimeError as e:
            raise InputError(f"{path} is not a sentencepiece model (truncated or another kind of file): "
                             f"{' '.join(str(e).split())}") from None
        self.max_len = max_len
        self.n_words: int = self.sp_model.vocab_size()
        self.bos_id: int = self.sp_model.bos_id()
        self.eos_id: int = self.sp_model.eos_id()
        self.pad_id: int = self._find_pad_id(path)

    def _find_pad_id(self, path: str) -> int:
        """Id of the piece `<0x00>`, else sentencepiece's own pad id; a model with neither is an error."""
        pad = self.sp_model.piece_to_id(PAD_PIECE)
        if self.sp_model.id_to_piece(pad) == PAD_PIECE:  # piece_to_id answers unk_id for an unknown piece
            return pad
        if self.sp_model.pad_id() >= 0:
            return self.sp_model.pad_id()
        raise InputError(f"{path} has neither a {PAD_PIECE} piece nor a pad id to pad with")

    def encode(self, s: str, bos: bool, eos: bool) -> list[int]:
        """Piece ids of `s`, truncated to max_len, then with BOS prepended and/or EOS appended."""
        if not isinstance(s, str):
            raise TypeError(f"Tokenizer.encode expects a str, got {type(s).__name__}")
        ids = self.sp_model.encode(utf8_text(s))
        if self.max_len is not None:
            ids = ids[: self.max_len]
        if bos:
            ids = [self.bos_id] + ids
        if eos:
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of a sequence of piece ids (BOS/EOS are dropped by sentencepiece)."""
        return self.sp_model.decode([int(i) for i in ids])


def utf8_text(s: str) -> str:
    """`s` as text sentencepiece encodes. Bytes that Python could not decode, kept as lone surrogates (PEP 383: a
    command line under an ASCII locale, such as LC_ALL=C with UTF-8 mode off, holds `café` so), are decoded as UTF-8;
    what is not valid UTF-8 then is an InputError that shows where."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        raw = s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        shown = f"{s[:e.start]}\\u{ord(s[e.start]):04x}{s[e.start + 1:]}"  # printable where stderr is strict UTF-8
        raise InputError(f"the text {excerpt(shown, e.start, e.start + 6)} holds a lone surrogate "
                         f"(U+{ord(s[e.start]):04X} at character {e.start}), which is not a character") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = len(raw[:e.start].decode("utf-8"))  # where the byte, shown as \\xNN, begins in the text
        raise InputError(f"the text {excerpt(raw.decode('utf-8', 'backslashreplace'), at, at + 4)} is not valid "
                         f"UTF-8 ({e.reason} at byte {e.start})") from None


def excerpt(text: str, start: int, end: int, width: int = 30) -> str:
    """text[start:end] quoted, after at most `width` characters of what comes before it, with … for what is left
    out."""
    return f'"{"…" * (start > width)}{text[max(0, start - width):end]}{"…" * (end < len(text))}"'
