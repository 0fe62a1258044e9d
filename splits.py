"""The examples of a task: a data file's `label ||| sentence` lines (read_examples, the one reader of that format)
and its Split, its label names and the course's prompt after each sentence, the examples on the device and the
batches they are computed in (example indices, from their lengths; shuffled with the random draws of the course's
DataLoader), whether they fit a model, and the scores of the predictions made for them."""
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from sklearn.metrics import accuracy_score, f1_score
from torch.nn.utils.rnn import pad_sequence

import files
from config import LlamaConfig
from files import InputError
from tokenizer import Tokenizer

PLACEHOLDER = -1  # the label of an example whose gold label is withheld
LABEL = re.compile(r"[ \t]*-?[0-9]+[ \t]*")  # not int()'s "+1", "0_1" or "١" (an Arabic-Indic one)
GROUP_CHUNK = 50  # --group_by_length sorts within chunks of this many batches


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


def read_examples(path: str) -> tuple[list[tuple[int, str]], str]:
    """The (label, sentence) of each `label ||| sentence` line of a data file, and the file's sha256. A byte order
    mark and blank lines at the end are ignored; a blank line before the last sentence is an error, as is a file
    without any line."""
    data, sha256 = files.read(path)
    examples = []
    for lineno, raw in enumerate(files.data_lines(data), 1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: not UTF-8 text ({e})") from None
        label, separator, sentence = line.partition(" ||| ")
        sentence = sentence.strip()
        if not separator or not sentence:
            raise InputError(f"{where}: expected 'label ||| sentence', found {line.rstrip()[:80]!r}")
        if not LABEL.fullmatch(label):
            raise InputError(f"{where}: the label {label!r} is not an integer written in the digits 0-9")
        examples.append((int(label), sentence))
    if not examples:
        raise InputError(f"{path}: empty file: no 'label ||| sentence' lines")
    return examples, sha256


def read_gold(path: str) -> list[int]:
    """The label of each line of a data file, in order."""
    return [label for label, _ in read_examples(path)[0]]


def create_data(path: str, tokenizer: Tokenizer, num_labels: int, suffix: str | None = None,
                placeholders: bool = False) -> Split:
    """A data file's Split: the token ids of an example are BOS and the sentence's (at most max_len).

    With a prompt `suffix`, an example is the sentence, a space and the suffix, as in the course, and its token ids
    end with the suffix's, which max_len does not cut. Labels must be 0 … num_labels − 1, or PLACEHOLDER where
    `placeholders` allows it.
    """
    examples, sha256 = read_examples(path)
    for lineno, (label, _) in enumerate(examples, 1):
        if not (0 <= label < num_labels or placeholders and label == PLACEHOLDER):
            allowed = f"0 … {num_labels - 1}" + (f" or {PLACEHOLDER}" if placeholders else "")
            raise InputError(f"{path}:{lineno}: label {label} is not one of {allowed} ({num_labels} label names)")
    suffix_ids = tokenizer.sp_model.encode(suffix) if suffix else []
    sentences = [f"{sentence} {suffix}" if suffix else sentence for _, sentence in examples]
    token_ids = [tokenizer.encode(sentence, bos=True, eos=False) + suffix_ids for _, sentence in examples]
    print(f"load {len(examples)} data from {path}")
    return Split(path, sentences, [label for label, _ in examples], token_ids, len(suffix_ids), sha256)


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


class LlamaDataset:
    """A split (kept as `split`) with its token ids right-padded into one tensor that is moved to the device once. A
    batch is then a slice of a device-side index into it, cut to the batch's longest sentence, so the loops copy
    nothing between host and device."""

    def __init__(self, split: Split, pad_id: int, device: torch.device):
        self.split = split
        self.lengths = [len(ids) for ids in split.token_ids]  # kept on the host too: they set each batch's width
        rows = [torch.tensor(ids) for ids in split.token_ids]
        self.token_ids = pad_sequence(rows, batch_first=True, padding_value=pad_id).to(device)
        self.device_lengths = torch.tensor(self.lengths).to(device)
        self.labels = torch.tensor(split.labels).to(device)

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self, order: list[list[int]], widths: list[int] | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        """(example indices, token ids, lengths, labels) of each batch in `order`, all on the device, padded to the
        batch's longest sentence or to `widths` (a process's share of a batch is padded as the whole batch is)."""
        index = torch.tensor([i for batch in order for i in batch]).to(self.token_ids.device)
        widths = widths or [max(self.lengths[i] for i in batch) for batch in order]
        start = 0
        for batch, width in zip(order, widths):
            rows = index[start : start + len(batch)]
            start += len(batch)
            yield rows, self.token_ids[rows, :width], self.device_lengths[rows], self.labels[rows]


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


def loader_seed() -> int:
    """One draw from torch's global generator, of the kind the course's DataLoader makes: as a pass over it starts,
    its iterator draws a base seed (for worker processes, which the course has none of), and the RandomSampler of a
    shuffling DataLoader draws the seed of the pass's permutation."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


def shuffled_batches(lengths: list[int], batch_size: int, group_by_length: bool) -> list[list[int]]:
    """The batches of a new pass of the course's DataLoader(shuffle=True, batch_size=batch_size) over examples of
    these lengths, drawn as it draws them: the base seed, then the seed of a generator of its own, which draws the
    permutation (batch_order, which goes on drawing from it to group by length)."""
    loader_seed()  # the pass's base seed
    generator = torch.Generator().manual_seed(loader_seed())  # the RandomSampler's
    return batch_order(lengths, batch_size, True, group_by_length, generator)


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


def placeholder_labels(labels: list[int]) -> bool:
    """Whether a file's labels are placeholders, not gold labels to score against: some are PLACEHOLDER, or all are
    one value (the course's cfimdb-test.txt, whose labels are all 0)."""
    return PLACEHOLDER in labels or len(set(labels)) == 1


def report(name: str, split: Split, preds: list[int]) -> str:
    """Accuracy and macro-F1, or why they mean nothing: the split's labels are placeholders."""
    if PLACEHOLDER in split.labels:
        return (f"{name} acc :: meaningless: {split.path} has placeholder labels ({PLACEHOLDER}); "
                f"its {len(preds)} predictions are written all the same")
    if placeholder_labels(split.labels):
        return (f"{name} acc :: not scored: every label in {split.path} is {split.labels[0]}, so they are "
                f"placeholders and an accuracy would be meaningless; its {len(preds)} predictions are written all "
                "the same")
    acc, f1 = scores(split.labels, preds)
    return f"{name} acc :: {acc:.3f}, macro-F1 :: {f1:.3f}"


def write_predictions_to_file(outfile: str, preds: list[int], sentences: list[str]) -> None:
    """Write `<pred> ||| <sentence>` lines, the data files' layout."""
    files.write_text(outfile, "".join(f"{pred} ||| {sentence}\n" for pred, sentence in zip(preds, sentences)))
    print(f"wrote {len(preds)} predictions to {outfile}")


def check_fits(config: LlamaConfig, tokenizer: Tokenizer, splits: list[Split], tokenizer_model: str,
               model_path: str) -> None:
    """Refuse a tokenizer of another vocabulary size than the model of `config`, and sentences longer than its
    context. `tokenizer_model` and `model_path` are the files they were read from, which the refusal names."""
    vocab_size, max_seq_len = config.vocab_size, config.max_seq_len
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
