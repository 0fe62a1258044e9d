"""The examples of a task: a data file's Split, its label names and the course's prompt after each sentence, the
batches they are computed in (example indices, from their lengths), whether they fit a model, and the scores of the
predictions made for them."""
import json
from dataclasses import dataclass

import torch
from sklearn.metrics import accuracy_score, f1_score

import files
from llama import Llama
from tokenizer import Tokenizer

PLACEHOLDER = -1  # the label of an example whose gold label is withheld
GROUP_CHUNK = 50  # --group_by_length sorts within chunks of this many batches


class InputError(Exception):
    """A data file, label file, model or command line that run_llama.py cannot work with."""


@dataclass
class Split:
    """A data file's sentences, gold labels and token ids, in file order (example i is on line i + 1), and how many
    of each example's last ids are the prompt after the sentence, and the sha256 of the file as it was read."""

    path: str
    sentences: list[str]
    labels: list[int]
    token_ids: list[list[int]]
    suffix_len: int = 0
    sha256: str = ""


def read_label_names(path: str) -> list[str]:
    """The JSON list of label names (UTF-8, a byte order mark allowed); label i is named label_names[i]. At least
    two, each a different non-blank string."""
    try:
        label_names = json.loads(files.read(path)[0].decode("utf-8-sig"))
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to be a list of label names") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(label_names, list):
        raise InputError(f"{path}: expected a JSON list of label names, found {str(label_names)[:80]!r}")
    first_of: dict[str, int] = {}
    for i, name in enumerate(label_names):
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{path}: label name {i} is {name!r}: each label name must be a non-blank string")
        if name.strip() in first_of:
            raise InputError(f"{path}: label names {first_of[name.strip()]} and {i} are both {name.strip()!r}: "
                             "each label needs a name of its own")
        first_of[name.strip()] = i
    if len(label_names) < 2:
        raise InputError(f"{path}: expected at least two label names, found {len(label_names)}")
    return label_names


def prompt_suffix(label_names: list[str]) -> str:
    """The course's prompt: `Is this movie a or b? This movie is ` (`a, b, c, or d` for more labels)."""
    if len(label_names) == 2:
        labels = " or ".join(label_names)
    else:
        labels = ", ".join(label_names[:-1]) + ", or " + label_names[-1]
    return f"Is this movie {labels}? This movie is "


def batch_order(lengths: list[int], batch_size: int, shuffle: bool, group_by_length: bool,
                generator: torch.Generator | None = None) -> list[list[int]]:
    """The example indices of each batch.

    shuffle draws a permutation from `generator` (default: torch's global generator, seeded by --seed).
    group_by_length sorts the examples by length within chunks of GROUP_CHUNK batches (all of them when not
    shuffling), so that a batch holds sentences of similar length and little padding; shuffled, the batches are
    then put in random order.
    """
    n = len(lengths)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    if group_by_length:
        chunk = batch_size * GROUP_CHUNK if shuffle else n
        chunks = (order[start : start + chunk] for start in range(0, n, chunk))
        order = [i for c in chunks for i in sorted(c, key=lengths.__getitem__)]
    batches = [order[start : start + batch_size] for start in range(0, n, batch_size)]
    if shuffle and group_by_length:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def eval_order(lengths: list[int], batch_size: int, group_by_length: bool, causal: bool) -> list[list[int]]:
    """The batches of an evaluation: the course's (file order, batch_size rows each) unless --group_by_length
    with --causal. Without a mask every position attends to the pads, so a row's batch changes its prediction;
    with the causal mask it does not, and grouping only saves time."""
    return batch_order(lengths, batch_size, shuffle=False, group_by_length=group_by_length and causal)


def padded_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """The fraction of the token positions computed in these batches that are padding."""
    computed = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1 - sum(lengths) / computed


def scores(labels: list[int], preds: list[int]) -> tuple[float, float]:
    """Accuracy and macro-F1, as Python floats (checkpoints hold plain data, not NumPy scalars)."""
    return float(accuracy_score(labels, preds)), float(f1_score(labels, preds, average="macro"))


def report(name: str, split: Split, preds: list[int]) -> str:
    """Accuracy and macro-F1, or why they mean nothing: placeholder labels, or one label throughout."""
    if PLACEHOLDER in split.labels:
        return (f"{name} acc :: meaningless: {split.path} has placeholder labels ({PLACEHOLDER}); "
                f"its {len(preds)} predictions are written all the same")
    acc, f1 = scores(split.labels, preds)
    line = f"{name} acc :: {acc:.3f}, macro-F1 :: {f1:.3f}"
    if len(set(split.labels)) == 1:
        line += (f" (every label in {split.path} is {split.labels[0]}: if these are placeholders, as in the "
                 "course's cfimdb-test.txt, this accuracy is meaningless)")
    return line


def write_predictions_to_file(outfile: str, preds: list[int], sentences: list[str]) -> None:
    """Write `<pred> ||| <sentence>` lines, the data files' layout."""
    files.write_text(outfile, "".join(f"{pred} ||| {sentence}\n" for pred, sentence in zip(preds, sentences)))
    print(f"wrote {len(preds)} predictions to {outfile}")


def check_fits(llama: Llama, tokenizer: Tokenizer, splits: list[Split], tokenizer_model: str, model_path: str) -> None:
    """Refuse a tokenizer of another vocabulary size than the model's, and sentences longer than its context.
    `tokenizer_model` and `model_path` are the files they were read from, which the refusal names."""
    vocab_size, max_seq_len = llama.config.vocab_size, llama.config.max_seq_len
    if tokenizer.n_words != vocab_size:
        raise InputError(f"the tokenizer {tokenizer_model} has {tokenizer.n_words} pieces, "
                         f"{'more' if tokenizer.n_words > vocab_size else 'fewer'} than the "
                         f"{vocab_size} embeddings of the model {model_path}: they do not belong "
                         "together (pass the model's own tokenizer with --tokenizer-model)")
    for split in splits:
        for i, ids in enumerate(split.token_ids):
            if len(ids) > max_seq_len:
                raise InputError(f"{split.path}:{i + 1}: {len(ids)} tokens, more than the model's max_seq_len="
                                 f"{max_seq_len}; {fitting_advice(tokenizer.max_len, split.suffix_len, max_seq_len)}")


def fitting_advice(max_sentence_len: int | None, suffix_len: int, max_seq_len: int) -> str:
    """What makes an example of BOS, a sentence cut to max_sentence_len tokens and suffix_len prompt tokens fit in
    max_seq_len tokens."""
    prompt = f"the prompt after the sentence takes {suffix_len} tokens" if suffix_len else ""
    room = max_seq_len - 1 - suffix_len  # for the sentence's tokens
    if room < 1:
        return f"{prompt}, which leaves no room for a sentence: use shorter label names"
    if max_sentence_len is None:
        return "pass --max_sentence_len to truncate sentences" + (f" ({prompt})" if prompt else "")
    return (f"--max_sentence_len {max_sentence_len} is too long" + (f" because {prompt}" if prompt else "") +
            f": pass --max_sentence_len {room} or less")
