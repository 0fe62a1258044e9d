"""run_llama.py end to end on a tiny random Llama, the real tokenizer and the first lines of the real data files."""
import codecs
import inspect
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Iterator

import numpy as np
import pytest
import torch
from sentencepiece import SentencePieceTrainer
from torch.utils.data import DataLoader

import options
import run_llama
import splits
import trainer
from classifier import LlamaEmbeddingClassifier, LlamaZeroShotClassifier
from config import ClassifierConfig, LlamaConfig
from llama import Llama, load_pretrained
from run_llama import InputError
from tokenizer import Tokenizer

SCRIPT = Path(__file__).resolve().parent.parent / "run_llama.py"
GetAsset = Callable[[str], Path]  # conftest's `asset` fixture: a public file's path, fetched through assets.py


def copy_head(asset: GetAsset, cwd: Path, name: str, n: int) -> list[str]:
    """Write the first n lines of the public data/<name> to cwd/data/<name>; return them."""
    lines = asset(f"data/{name}").read_text(encoding="utf-8").splitlines(keepends=True)[:n]
    (cwd / "data").mkdir(exist_ok=True)
    (cwd / "data" / name).write_text("".join(lines), encoding="utf-8")
    return lines


def sentences(lines: list[str]) -> list[str]:
    return [line.split(" ||| ", 1)[1].strip() for line in lines]


def run(cwd: Path, mirror: Path, *args: str) -> subprocess.CompletedProcess:
    """run_llama.py in cwd, fetching any missing public file from `mirror` (the tests' asset_cache)."""
    env = {**os.environ, "MINLLAMA_ASSET_MIRROR": str(mirror)}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def plotted(folder: Path, name: str, stdout: str) -> set[str]:
    """{name} when matplotlib is installed, the run having drawn that PNG; else the empty set, the run having said
    that it was not drawn (matplotlib is optional for users)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert f"note: matplotlib is not installed, so {name} was not drawn" in stdout
        return set()
    assert (folder / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    return {name}


def read_predictions(path: Path, num_labels: int) -> tuple[list[int], list[str]]:
    """Parse `<pred> ||| <sentence>` lines, checking each prediction is a label."""
    preds, sents = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        pred, sentence = line.split(" ||| ")
        assert int(pred) in range(num_labels)
        preds.append(int(pred))
        sents.append(sentence)
    return preds, sents


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---- the three options as a student runs them ----
@pytest.mark.parametrize("causal", [False, True], ids=["course", "causal"])
def test_generate(tmp_path: Path, asset_cache: Path, model_path: str, tokenizer_model: str, causal: bool):
    result = run(tmp_path, asset_cache, "--option", "generate",
                 "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model,
                 *(["--causal"] if causal else []))
    assert result.returncode == 0, result.stderr
    greedy = (tmp_path / "generated-sentence-temp-0.txt").read_bytes().decode("utf-8")
    sampled = (tmp_path / "generated-sentence-temp-1.txt").read_bytes().decode("utf-8")

    torch.manual_seed(1337)  # the default --seed, then the course's draws: a load before each temperature
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    prompt = torch.tensor([tokenizer.encode(run_llama.PREFIX, bos=True, eos=False)])
    for text, temperature in ((greedy, 0.0), (sampled, 1.0)):
        llama = load_pretrained(model_path, causal=causal)
        expected = llama.generate(prompt, 75, temperature=temperature, use_cache=False)
        assert expected.shape[1] == prompt.shape[1] + 75
        assert text == tokenizer.decode(expected[0].tolist())
        assert text.startswith(run_llama.PREFIX)
    assert greedy != sampled
    assert result.stdout.count(run_llama.PREFIX) == 2  # both printed


def test_generate_in_bfloat16(tmp_path: Path, monkeypatch, model_path: str, tokenizer_model: str):
    monkeypatch.chdir(tmp_path)
    run_llama.main(["--option", "generate", "--dtype", "bfloat16",
                    "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model])
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    prompt_length = len(tokenizer.encode(run_llama.PREFIX, bos=True, eos=False))
    for name in ("generated-sentence-temp-0.txt", "generated-sentence-temp-1.txt"):
        text = (tmp_path / name).read_bytes().decode("utf-8")
        assert text.startswith(run_llama.PREFIX)
        assert len(tokenizer.encode(text, bos=True, eos=False)) > prompt_length


def course_batches(encoded: list[list[int]], batch_size: int, pad_id: int) -> Iterator[list[list[int]]]:
    """The course's evaluation batches: file order, batch_size rows, right-padded to the batch's longest row."""
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(map(len, batch))
        yield [ids + [pad_id] * (width - len(ids)) for ids in batch]


@pytest.mark.parametrize("causal", [False, True], ids=["course", "causal"])
def test_prompt_cfimdb(tmp_path: Path, asset: GetAsset, asset_cache: Path, model_path: str, tokenizer_model: str,
                       causal: bool):
    dev = copy_head(asset, tmp_path, "cfimdb-dev.txt", 7)
    test = copy_head(asset, tmp_path, "cfimdb-test.txt", 4)
    copy_head(asset, tmp_path, "cfimdb-label-mapping.json", 1)
    result = run(tmp_path, asset_cache, "--option", "prompt", "--batch_size", "3",
                 "--train", "data/cfimdb-train.txt", "--dev", "data/cfimdb-dev.txt", "--test", "data/cfimdb-test.txt",
                 "--label-names", "data/cfimdb-label-mapping.json",
                 "--dev_out", "cfimdb-dev-prompting-output.txt", "--test_out", "cfimdb-test-prompting-output.txt",
                 "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model,
                 *(["--causal"] if causal else []))
    assert result.returncode == 0, result.stderr
    suffix = "Is this movie bad or good? This movie is "
    dev_preds, dev_sents = read_predictions(tmp_path / "cfimdb-dev-prompting-output.txt", 2)
    test_preds, test_sents = read_predictions(tmp_path / "cfimdb-test-prompting-output.txt", 2)
    # what the course writes: the sentence, a space and the prompt suffix
    assert dev_sents == [f"{s} {suffix}" for s in sentences(dev)]
    assert test_sents == [f"{s} {suffix}" for s in sentences(test)]
    assert re.search(r"^dev acc :: \d\.\d{3}, macro-F1 :: \d\.\d{3}", result.stdout, re.M)
    assert re.search(r"^test acc :: .*cfimdb-test\.txt is 0.*meaningless", result.stdout, re.M)  # placeholders

    # the course's harness: its config, its batches (prompt encoded as one string), model(ids) without lengths
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    config = SimpleNamespace(pretrained_model_path=model_path, label_names=["bad", "good"], num_labels=2,
                             data_dir=".", option="prompt", causal=causal)
    model = LlamaZeroShotClassifier(config, tokenizer, ["bad", "good"])
    for lines, preds in ((dev, dev_preds), (test, test_preds)):
        encoded = [tokenizer.encode(f"{s} {suffix}", bos=True, eos=False) for s in sentences(lines)]
        expected = []
        with torch.no_grad():
            for batch in course_batches(encoded, 3, tokenizer.pad_id):
                ids = torch.tensor(batch)
                lengths = torch.tensor([len(x) for x in encoded[len(expected) : len(expected) + len(batch)]])
                expected += model(ids, lengths if causal else None).argmax(-1).tolist()
        assert preds == expected


@pytest.mark.parametrize("name", ["sst", "cfimdb"])
def test_prompts_are_tokenized_as_the_course_does(asset: GetAsset, tokenizer_model: str, name: str):
    """Sentence and suffix encoded apart (so that --max_sentence_len cuts the sentence only) give the ids of the
    course's one string f"{sentence} {suffix}", on every dev and test line."""
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    label_names = json.loads(asset(f"data/{name}-label-mapping.json").read_text())
    suffix = run_llama.prompt_suffix(label_names)
    for split in ("dev", "test"):
        data = run_llama.create_data(str(asset(f"data/{name}-{split}.txt")), tokenizer,
                                     len(label_names), suffix, placeholders=True)
        assert data.token_ids == [tokenizer.encode(s, bos=True, eos=False) for s in data.sentences]


def test_finetune_sst(tmp_path: Path, asset: GetAsset, asset_cache: Path, model_path: str,
                      tokenizer_model: str):
    copy_head(asset, tmp_path, "sst-train.txt", 16)
    dev = copy_head(asset, tmp_path, "sst-dev.txt", 8)
    test = copy_head(asset, tmp_path, "sst-test.txt", 6)
    copy_head(asset, tmp_path, "sst-label-mapping.json", 1)
    before = files(tmp_path)
    result = run(tmp_path, asset_cache, "--option", "finetune", "--epochs", "2", "--lr", "1e-3", "--batch_size", "4",
                 "--train", "data/sst-train.txt", "--dev", "data/sst-dev.txt", "--test", "data/sst-test.txt",
                 "--label-names", "data/sst-label-mapping.json",
                 "--dev_out", "sst-dev-finetuning-output.txt", "--test_out", "sst-test-finetuning-output.txt",
                 "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model)
    assert result.returncode == 0, result.stderr
    outputs = {"finetune-2-0.001.pt", "finetune-2-0.001-last.pt", "metrics.jsonl", "sst-dev-finetuning-output.txt",
               "sst-test-finetuning-output.txt"} | plotted(tmp_path, "finetune-2-0.001.png", result.stdout)
    assert files(tmp_path) == before | outputs  # and no temporary file left behind
    epochs = re.findall(r"^epoch (\d): train loss :: (\d+\.\d{3}), train acc :: (\d\.\d{3}), dev acc :: (\d\.\d{3}), "
                        r"[\d.]+s, [\d.]+ examples/s, padding \d+\.\d%$", result.stdout, re.M)
    assert [e[0] for e in epochs] == ["0", "1"]

    # one metrics line per epoch, as printed; the picture of them
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["option"], r["epoch"]) for r in records] == [("finetune", 0), ("finetune", 1)]
    assert len({r["run"] for r in records}) == 1
    for record, (_, loss, train_acc, dev_acc) in zip(records, epochs):
        assert f"{record['loss']:.3f}, {record['train_acc']:.3f}, {record['dev_acc']:.3f}" == \
            f"{loss}, {train_acc}, {dev_acc}"
        assert 0 <= record["train_f1"] <= 1 and 0 <= record["dev_f1"] <= 1 and 0 <= record["padded"] < 1
        assert record["seconds"] > 0 and record["examples_per_s"] == pytest.approx(16 / record["seconds"])

    saved = torch.load(tmp_path / "finetune-2-0.001.pt", weights_only=True)
    assert LlamaConfig(**saved["model_args"]) == load_pretrained(model_path, device="cpu").config
    assert saved["model_config"] == asdict(ClassifierConfig(model_path, 5, 0.3, "finetune"))
    assert saved["label_names"] == ["awful", "bad", "average", "good", "excellent"]
    assert saved["args"]["epochs"] == 2 and saved["args"]["train"] == "data/sst-train.txt"
    assert saved["epoch"] in (0, 1) and saved["optim"]["state"]
    assert abs(saved["best_dev_acc"] - max(float(e[3]) for e in epochs)) < 1e-3
    assert {k.split(".")[0] for k in saved["model"]} == {"llama", "classifier_head"}

    # the written predictions are the saved model's, on the course's batches of --batch_size rows
    model = LlamaEmbeddingClassifier(ClassifierConfig(**saved["model_config"]))
    model.load_state_dict(saved["model"])
    model.eval()
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    for name, lines in (("dev", dev), ("test", test)):
        preds, sents = read_predictions(tmp_path / f"sst-{name}-finetuning-output.txt", 5)
        assert sents == sentences(lines)
        encoded = [tokenizer.encode(sentence, bos=True, eos=False) for sentence in sents]
        with torch.no_grad():
            expected = [p for batch in course_batches(encoded, 4, tokenizer.pad_id)
                        for p in model(torch.tensor(batch)).argmax(-1).tolist()]
        assert preds == expected


def test_train_acc_is_the_courses_pass_with_dropout_off(tmp_path: Path, monkeypatch, capsys, asset: GetAsset,
                                                        model_path: str, tokenizer_model: str):
    """"train acc", printed per epoch and recorded as train_acc, is the course's: the accuracy on the training set of
    the model after the epoch, in a pass of its own with dropout off. With --causal, where a row's batch changes no
    prediction, one row at a time gives it. The accuracy of the predictions made while training, dropout on, is
    recorded as running_acc (the course's own run, in its semantics: tests/test_course_run.py)."""
    monkeypatch.chdir(tmp_path)
    train = copy_head(asset, tmp_path, "sst-train.txt", 16)
    for name, n in (("sst-dev.txt", 4), ("sst-test.txt", 2), ("sst-label-mapping.json", 1)):
        copy_head(asset, tmp_path, name, n)
    run_llama.main(["--option", "finetune", "--train", "data/sst-train.txt", "--epochs", "1", "--lr", "1e-3",
                    "--batch_size", "4", "--causal", "--hidden_dropout_prob", "0.5",
                    "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model])
    printed = re.findall(r"^epoch 0: train loss :: \d+\.\d{3}, train acc :: (\d\.\d{3}), ", capsys.readouterr().out,
                         re.M)

    saved = torch.load("finetune-1-0.001-last.pt", weights_only=True)  # the weights after epoch 0
    model = LlamaEmbeddingClassifier(ClassifierConfig(**saved["model_config"]))
    model.load_state_dict(saved["model"])
    model.eval()
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    with torch.no_grad():
        preds = [model(torch.tensor([ids]), torch.tensor([len(ids)])).argmax(-1).item()
                 for ids in (tokenizer.encode(sentence, bos=True, eos=False) for sentence in sentences(train))]
    labels = [int(line.split(" ||| ")[0]) for line in train]
    acc = sum(pred == label for pred, label in zip(preds, labels)) / len(labels)
    assert printed == [f"{acc:.3f}"]
    [record] = [json.loads(line) for line in Path("metrics.jsonl").read_text().splitlines()]
    assert record["train_acc"] == acc and 0 <= record["running_acc"] <= 1 and 0 <= record["running_f1"] <= 1


def test_design_example_derives_files_and_fetches_assets(tmp_path: Path, asset: GetAsset, asset_cache: Path,
                                                         model_path: str, tokenizer_model: str):
    """`--option finetune --train data/sst-train.txt`: SST's dev, test, labels and output names; the missing label
    file is fetched (here from the tests' asset cache, as a mirror). Also with --group_by_length and --dtype
    bfloat16."""
    label_names = asset("data/sst-label-mapping.json")  # in asset_cache, for run_llama.py to fetch
    for name, n in (("sst-train.txt", 12), ("sst-dev.txt", 5), ("sst-test.txt", 7)):
        copy_head(asset, tmp_path, name, n)
    result = run(tmp_path, asset_cache, "--option", "finetune", "--train", "data/sst-train.txt", "--epochs", "1",
                 "--batch_size", "4", "--group_by_length", "--dtype", "bfloat16",
                 "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "sst-label-mapping.json").read_bytes() == label_names.read_bytes()
    assert len(read_predictions(tmp_path / "sst-dev-finetuning-output.txt", 5)[0]) == 5
    assert len(read_predictions(tmp_path / "sst-test-finetuning-output.txt", 5)[0]) == 7
    assert torch.load(tmp_path / "finetune-1-2e-05.pt", weights_only=True)["args"]["dtype"] == "bfloat16"
    assert not list(tmp_path.rglob("cfimdb*"))


def test_bad_input_exits_nonzero_naming_the_line(tmp_path: Path, asset: GetAsset, asset_cache: Path, model_path: str,
                                                 tokenizer_model: str):
    for name in ("sst-train.txt", "sst-test.txt"):
        copy_head(asset, tmp_path, name, 4)
    lines = copy_head(asset, tmp_path, "sst-dev.txt", 4)
    (tmp_path / "data" / "sst-dev.txt").write_text("".join(lines[:2]) + "3 | not the separator\n" + lines[3])
    copy_head(asset, tmp_path, "sst-label-mapping.json", 1)
    before = files(tmp_path)
    result = run(tmp_path, asset_cache, "--option", "prompt", "--train", "data/sst-train.txt",
                 "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model)
    assert result.returncode != 0
    assert "error: data/sst-dev.txt:3: expected 'label ||| sentence'" in result.stderr
    assert files(tmp_path) == before


# ---- the same errors and choices, in-process ----
def test_a_fine_tunes_own_names_carry_a_seed_other_than_the_courses():
    """The course's seed keeps the course's names; another puts -seedN into the checkpoints, the plot and the derived
    prediction files, so that the runs of a seed sweep in one folder write apart. Zero-shot predictions draw nothing
    at random, and keep their names."""
    course = options.parse_args(["--option", "finetune", "--train", "data/sst-train.txt"])
    seed = options.parse_args(["--option", "finetune", "--train", "data/sst-train.txt", "--seed", "7"])
    assert (course.filepath, course.dev_out) == ("finetune-5-2e-05.pt", "sst-dev-finetuning-output.txt")
    assert (seed.filepath, seed.last_filepath, seed.plot_filepath, seed.dev_out, seed.test_out) == (
        "finetune-5-2e-05-seed7.pt", "finetune-5-2e-05-seed7-last.pt", "finetune-5-2e-05-seed7.png",
        "sst-dev-finetuning-output-seed7.txt", "sst-test-finetuning-output-seed7.txt")
    prompt = options.parse_args(["--option", "prompt", "--train", "data/sst-train.txt", "--seed", "7"])
    assert prompt.dev_out == "sst-dev-prompting-output.txt"


def test_each_temperature_has_a_file_of_its_own():
    """0.5 and 0.50000000001 went to one file, generated-sentence-temp-0.5.txt, the second replacing the first."""
    args = options.parse_args(["--option", "generate", "--temperature", "0.5", "0.50000000001", "2", "1e-05"])
    assert options.generation_outputs(args) == {
        0.5: "generated-sentence-temp-0.5.txt", 0.50000000001: "generated-sentence-temp-0.50000000001.txt",
        2.0: "generated-sentence-temp-2.txt", 1e-05: "generated-sentence-temp-1e-05.txt"}


def test_default_and_derived_paths():
    course = options.parse_args(["--option", "prompt"])
    assert (course.train, course.dev, course.test, course.label_names, course.dev_out, course.test_out) == (
        "data/cfimdb-train.txt", "data/cfimdb-dev.txt", "data/cfimdb-test.txt", "data/cfimdb-label-mapping.json",
        "cfimdb-dev-prompting-output.txt", "cfimdb-test-prompting-output.txt")
    assert (course.pretrained_model_path, course.tokenizer_model, course.seed, course.epochs, course.batch_size,
            course.hidden_dropout_prob, course.lr, course.max_sentence_len, course.group_by_length, course.dtype) == (
        "stories42M.pt", "tokenizer.model", 1337, 5, 8, 0.3, 2e-5, None, False, "float32")
    sst = options.parse_args(["--option", "finetune", "--train", "data/sst-train.txt", "--test_out", "mine.txt"])
    assert (sst.dev, sst.test, sst.label_names, sst.dev_out, sst.test_out, sst.filepath) == (
        "data/sst-dev.txt", "data/sst-test.txt", "data/sst-label-mapping.json", "sst-dev-finetuning-output.txt",
        "mine.txt", "finetune-5-2e-05.pt")
    lora = options.parse_args(["--option", "lora", "--train", "data/sst-train.txt", "--epochs", "3"])
    assert (lora.dev_out, lora.test_out, lora.filepath, lora.last_filepath, lora.plot_filepath) == (
        "sst-dev-lora-output.txt", "sst-test-lora-output.txt", "lora-3-2e-05.pt", "lora-3-2e-05-last.pt",
        "lora-3-2e-05.png")
    assert (lora.lora_rank, lora.lora_alpha, lora.lora_dropout, lora.lora_all_projections, lora.resume) == (
        4, 1.0, 0.0, False, False)
    assert options.parse_args(["--option", "generate"]).temperature == [0.0, 1.0]  # nothing to derive
    parsed = options.arg_parser().parse_args(["--option", "lora", "--train", "data/sst-train.txt"])  # as given
    assert (parsed.dev, parsed.dev_out, hasattr(parsed, "filepath")) == (None, None, False)
    with pytest.raises(SystemExit):
        options.parse_args(["--option", "prompt", "--train", "elsewhere/reviews.txt", "--dev", "d.txt"])


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
    (["--lr", "inf"], "--lr must be a positive finite number, got inf"),
    (["--lr", "-1"], r"--lr must be a positive finite number, got -1\.0"),
    (["--lr", "0"], r"--lr must be a positive finite number, got 0\.0"),
    (["--seed", "-1"], "--seed must be in 0 … 2147483647, got -1"),
    (["--seed", "4294967296"], "--seed must be in 0 … 2147483647, got 4294967296"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--batch_size", "0"], "--batch_size must be at least 1, got 0"),
    (["--max_sentence_len", "-2"], "--max_sentence_len must be at least 1, got -2"),
    (["--hidden_dropout_prob", "nan"], r"--hidden_dropout_prob must be in \[0, 1\), got nan"),
    (["--hidden_dropout_prob", "1"], r"--hidden_dropout_prob must be in \[0, 1\), got 1\.0"),
    (["--lora_rank", "0"], "--lora_rank must be at least 1"),
    (["--lora_alpha", "0"], "--lora_alpha must be a positive number"),
    (["--lora_alpha", "inf"], "--lora_alpha must be a positive number"),
    (["--lora_dropout", "1"], r"--lora_dropout must be in \[0, 1\)"),
])
def test_numeric_flags_are_checked_as_they_are_parsed(capsys, flags: list[str], message: str):
    with pytest.raises(SystemExit):
        options.parse_args(["--option", "lora", *flags])
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("file, content, message", [
    ("sst-dev.txt", b"3 ||| fine\nthree ||| not a number\n", r"data/sst-dev\.txt:2: the label 'three' is not an int"),
    ("sst-dev.txt", b"3 ||| fine\n\n4 ||| after a blank line\n",
     r"data/sst-dev\.txt:2: expected 'label \|\|\| sentence'"),
    ("sst-train.txt", b"7 ||| too many stars\n", r"data/sst-train\.txt:1: label 7 is not one of 0 … 4"),
    ("sst-test.txt", b"", r"data/sst-test\.txt: empty file"),
    ("sst-label-mapping.json", b'["bad", "good"', r"data/sst-label-mapping\.json:1: not valid JSON"),
    ("sst-label-mapping.json", b'["awful", "bad", "average", "bad", "excellent"]',
     r"data/sst-label-mapping\.json: label names 1 and 3 are both 'bad'"),
    ("sst-label-mapping.json", b'["awful", "bad", " ", "good", "excellent"]',
     r"data/sst-label-mapping\.json: label name 2 is ' ': each label name must be a non-blank string"),
    ("sst-label-mapping.json", b'["awful", "bad", "averag\xe9", "good", "excellent"]',
     r"data/sst-label-mapping\.json: not UTF-8 text"),
])
def test_bad_inputs_are_refused(tmp_path: Path, monkeypatch, model_path: str, tokenizer_model: str, file: str,
                                content: bytes, message: str):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name in ("sst-train.txt", "sst-dev.txt", "sst-test.txt"):
        (tmp_path / "data" / name).write_text("1 ||| a sentence\n4 ||| another one\n")
    (tmp_path / "data" / "sst-label-mapping.json").write_text('["awful", "bad", "average", "good", "excellent"]')
    (tmp_path / "data" / file).write_bytes(content)
    before = files(tmp_path)
    with pytest.raises(InputError, match=message):
        run_llama.main(["--option", "finetune", "--train", "data/sst-train.txt",
                        "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model])
    assert files(tmp_path) == before


def test_a_byte_order_mark_and_blank_lines_at_the_end_are_read_as_if_absent(tmp_path: Path, tokenizer_model: str):
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text("3 ||| A fine film .\n0 ||| Awful .\n")
    marked.write_bytes(codecs.BOM_UTF8 + b"3 ||| A fine film .\r\n0 ||| Awful .\r\n\r\n  \n\n")
    expected = run_llama.create_data(str(plain), tokenizer, 5)
    read = run_llama.create_data(str(marked), tokenizer, 5)
    assert (read.sentences, read.labels, read.token_ids) == (expected.sentences, expected.labels, expected.token_ids)
    marked.write_bytes(b"3 ||| A fine film .\r0 ||| Awful .\r")  # old Mac line ends
    read = run_llama.create_data(str(marked), tokenizer, 5)
    assert (read.sentences, read.labels, read.token_ids) == (expected.sentences, expected.labels, expected.token_ids)
    labels = tmp_path / "labels.json"
    labels.write_bytes(codecs.BOM_UTF8 + b'["bad", "good"]\n')
    assert run_llama.read_label_names(str(labels)) == ["bad", "good"]
    marked.write_bytes(codecs.BOM_UTF8 + b"3 ||| A fine film .\n\n0 ||| Awful .\n\n")  # a blank line inside
    with pytest.raises(InputError, match=r"marked\.txt:2: expected 'label \|\|\| sentence', found ''"):
        run_llama.create_data(str(marked), tokenizer, 5)


def applicable(option: str, *flags: str) -> list[str]:
    """Of `flags` (each with its value), those that --option takes: run_llama.py refuses the others."""
    pairs = zip(flags[::2], flags[1::2])
    return [item for flag, value in pairs if option in options.APPLIES_TO.get(flag, (option,))
            for item in (flag, value)]


# ---- the run's files, checked before any work ----
def test_outputs_never_overwrite_inputs_or_each_other(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sst-dev.txt").write_text("3 ||| gold\n")
    (tmp_path / "gold.txt").symlink_to("data/sst-dev.txt")
    before = files(tmp_path)
    sst = ["--option", "finetune", "--train", "data/sst-train.txt"]
    for flags, message in [
        (["--dev_out", "data/sst-dev.txt"],
         "--dev_out data/sst-dev.txt would overwrite --dev data/sst-dev.txt: an output may not be an input of the run"),
        (["--dev_out", "gold.txt"], "--dev_out gold.txt would overwrite --dev data/sst-dev.txt"),
        (["--test_out", "stories42M.pt"], "--test_out stories42M.pt would overwrite --pretrained-model-path"),
        (["--label-names", "metrics.jsonl"], "the metrics file metrics.jsonl would overwrite --label-names"),
        (["--pretrained-model-path", "finetune-5-2e-05.pt"],
         "the best checkpoint finetune-5-2e-05.pt would overwrite --pretrained-model-path finetune-5-2e-05.pt"),
        (["--resume", "--dev_out", "finetune-5-2e-05-last.pt"],
         "--dev_out finetune-5-2e-05-last.pt and the last checkpoint finetune-5-2e-05-last.pt are one file"),
        (["--dev_out", "o.txt", "--test_out", "o.txt"],
         "--dev_out o.txt and --test_out o.txt are one file: give each output its own path"),
        (["--option", "generate", "--train", "data/cfimdb-train.txt", "--generated_sentence_low_temp_out", "g.txt",
          "--generated_sentence_high_temp_out", "g.txt"],
         "--generated_sentence_low_temp_out g.txt and --generated_sentence_high_temp_out g.txt are one file"),
    ]:
        with pytest.raises(SystemExit):
            options.parse_args(sst + flags)
        assert message in capsys.readouterr().err
    # a file read twice, or read and then written by design (--resume's last checkpoint), is no clash
    options.parse_args(sst + ["--test", "data/sst-dev.txt", "--resume"])
    assert files(tmp_path) == before


@pytest.fixture
def unwritable_folder(tmp_path: Path) -> Path:
    """A folder in which this process cannot create a file: a read-only one, or, for root, whom permissions do not
    stop, /sys, which is mounted read-only."""
    read_only = tmp_path / "read-only"
    read_only.mkdir(mode=0o555)
    for folder in (read_only, Path("/sys")):
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError:
            return folder
    pytest.skip("no folder here refuses this user a new file")


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path: Path, monkeypatch,
                                                                    unwritable_folder: Path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    before = files(tmp_path)
    for flags, message in [
        (["--dev_out", "outputs"], r"cannot write --dev_out outputs: it is a folder"),
        (["--test_out", "missing/t.txt"], r"cannot write --test_out missing/t\.txt: the folder .*missing does not "
                                          r"exist"),
        (["--dev_out", str(unwritable_folder / "d.txt")], r"cannot write --dev_out .*d\.txt: Permission denied"),
    ]:
        with pytest.raises(InputError, match=message):
            options.parse_args(["--option", "prompt", *flags])
    options.parse_args(["--option", "prompt", "--dev_out", "outputs/d.txt"])  # and no probe is left behind
    assert files(tmp_path) == before


def test_data_files_that_cannot_be_read_are_refused(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    named = ["--option", "finetune", "--train", "data/sst-train.txt", "--dev", "data/sst-dev.txt",
             "--test", "data/sst-test.txt", "--label-names", "data/labels.json", "--dev_out", "d.txt",
             "--test_out", "t.txt"]
    for flag in ("--train", "--dev", "--test", "--label-names"):
        with pytest.raises(InputError, match=f"cannot read {flag} data: it is a folder"):
            options.parse_args([*named, flag, "data"])
    (tmp_path / "data" / "sst-dev.txt").write_text("3 ||| fine\n")
    access = os.access  # a file that permissions keep from this user (root reads any, so it is pretended)
    monkeypatch.setattr(os, "access", lambda path, mode: access(path, mode) and path != "data/sst-dev.txt")
    with pytest.raises(InputError, match="cannot read --dev data/sst-dev.txt: permission denied"):
        options.parse_args(named)


def test_tokenizer_bigger_than_the_model_is_refused(tmp_path: Path, monkeypatch, asset: GetAsset,
                                                    tokenizer_model: str):
    monkeypatch.chdir(tmp_path)
    for name in ("sst-dev.txt", "sst-test.txt", "sst-label-mapping.json"):
        copy_head(asset, tmp_path, name, 3)
    before = files(tmp_path)
    stories260k = str(asset("stories260K.bin"))  # a real llama2.c model with its own 512-piece vocabulary
    for option in ("generate", "prompt"):
        with pytest.raises(InputError, match=r"tokenizer.* has 32000 pieces, more than the 512 embeddings"):
            run_llama.main(["--option", option, *applicable(option, "--train", "data/sst-train.txt"),
                            "--pretrained-model-path", stories260k, "--tokenizer-model", tokenizer_model])
    assert files(tmp_path) == before


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory, asset: GetAsset) -> str:
    """A 400-piece byte-fallback sentencepiece model trained on SST's sentences: a tokenizer of another model."""
    proto = io.BytesIO()
    SentencePieceTrainer.train(sentence_iterator=iter(sentences(asset("data/sst-train.txt").read_text().splitlines())),
                               model_writer=proto, vocab_size=400, model_type="bpe", byte_fallback=True, minloglevel=2)
    path = tmp_path_factory.mktemp("small") / "small.model"
    path.write_bytes(proto.getvalue())
    return str(path)


def test_a_tokenizer_smaller_than_the_model_is_refused_before_any_work(tmp_path: Path, monkeypatch, asset: GetAsset,
                                                                       model_path: str, small_tokenizer: str):
    """Issue 19, defect 8: generate used to fail with "piece id is out of range" after generating."""
    monkeypatch.chdir(tmp_path)
    for name in ("sst-train.txt", "sst-dev.txt", "sst-test.txt", "sst-label-mapping.json"):
        copy_head(asset, tmp_path, name, 3)
    before = files(tmp_path)
    for option in ("generate", "prompt", "finetune", "lora"):
        with pytest.raises(InputError, match=r"small\.model has 400 pieces, fewer than the 32000 embeddings of the "
                                             r"model .*: they do not belong together"):
            run_llama.main(["--option", option, *applicable(option, "--train", "data/sst-train.txt", "--epochs", "1"),
                            "--pretrained-model-path", model_path, "--tokenizer-model", small_tokenizer])
    assert files(tmp_path) == before


def test_weights_whose_logits_overflow_are_one_line_naming_the_model(tmp_path: Path, monkeypatch, asset: GetAsset,
                                                                     model_path: str, tokenizer_model: str):
    """Issue 19, defect 9: norm gains of 1e38 ended generate in "probability tensor contains inf/nan", and scored
    prompts with NaN."""
    monkeypatch.chdir(tmp_path)
    for name in ("sst-dev.txt", "sst-test.txt", "sst-label-mapping.json"):
        copy_head(asset, tmp_path, name, 3)
    saved = torch.load(model_path, weights_only=True)
    for name, tensor in saved["model"].items():
        if name.endswith("norm.weight"):
            tensor.fill_(1e38)
    torch.save(saved, tmp_path / "loud.pt")
    before = files(tmp_path)
    for option in ("generate", "prompt"):
        with pytest.raises(InputError, match=r"^loud\.pt: the model computes logits that hold NaN or infinity"):
            run_llama.main(["--option", option, *applicable(option, "--train", "data/sst-train.txt"),
                            "--pretrained-model-path", "loud.pt", "--tokenizer-model", tokenizer_model])
    assert files(tmp_path) == before


@pytest.mark.parametrize("option", ["finetune", "lora"])
def test_checkpoints_record_and_restore_the_semantics(tmp_path: Path, monkeypatch, asset: GetAsset,
                                                      model_path: str, tokenizer_model: str, option: str):
    monkeypatch.chdir(tmp_path)
    copy_head(asset, tmp_path, "sst-train.txt", 6)
    copy_head(asset, tmp_path, "sst-dev.txt", 4)
    copy_head(asset, tmp_path, "sst-test.txt", 3)
    copy_head(asset, tmp_path, "sst-label-mapping.json", 1)
    built = []
    monkeypatch.setattr(trainer, "build_classifier",
                        lambda config: built.append(config.causal) or LlamaEmbeddingClassifier(config))
    run_llama.main(["--option", option, "--train", "data/sst-train.txt", "--epochs", "1", "--batch_size", "3",
                    "--causal", "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model])
    saved = torch.load(tmp_path / f"{option}-1-2e-05.pt", weights_only=True)
    assert saved["model_config"]["causal"] is True and saved["args"]["causal"] is True
    assert built == [True, True]  # trained causal; test() rebuilt it causal from the checkpoint alone
    with pytest.raises(InputError, match="causal True → False"):  # resuming in the other semantics
        run_llama.main(["--option", option, "--train", "data/sst-train.txt", "--epochs", "1", "--batch_size", "3",
                        "--resume", "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model])




def test_too_long_examples_are_told_what_would_fit(tokenizer_model: str):
    """The advice depends on whether --max_sentence_len was passed and on the prompt after the sentence, and the
    --max_sentence_len it suggests does make the example fit."""
    assert splits.fitting_advice(None, 0, 1024) == "pass --max_sentence_len to truncate sentences"
    assert splits.fitting_advice(2000, 0, 1024) == "--max_sentence_len 2000 is too long: pass --max_sentence_len " \
                                                  "1023 or less"
    assert splits.fitting_advice(None, 1023, 1024) == "the prompt after the sentence takes 1023 tokens, which " \
                                                     "leaves no room for a sentence: use shorter label names"
    suffix_ids = Tokenizer(tokenizer_model=tokenizer_model).sp_model.encode(run_llama.prompt_suffix(["bad", "good"]))
    sentence = "very " * 1100 + "long ."
    llama = Llama(LlamaConfig(vocab_size=32000, dim=8, n_layers=1, n_heads=2, n_kv_heads=2, max_seq_len=1024))
    for max_len, advice in ((None, r"pass --max_sentence_len to truncate sentences \(the prompt after the sentence "
                                    r"takes \d+ tokens\)"),
                            (1020, r"--max_sentence_len 1020 is too long because the prompt after the sentence "
                                   r"takes \d+ tokens: pass --max_sentence_len (\d+) or less")):
        tokenizer = Tokenizer(max_len, tokenizer_model=tokenizer_model)
        split = splits.Split("long.txt", [sentence], [1], [tokenizer.encode(sentence, True, False) + suffix_ids],
                                len(suffix_ids))
        with pytest.raises(InputError, match=r"long\.txt:1: \d+ tokens, more than the model's max_seq_len=1024; "
                                             + advice) as refusal:
            run_llama.check_fits(llama.config, tokenizer, [split], "tokenizer.model", "stories42M.pt")
    fitting = Tokenizer(int(re.search(advice, str(refusal.value))[1]), tokenizer_model=tokenizer_model)
    assert len(fitting.encode(sentence, True, False) + suffix_ids) == 1024


def test_placeholder_labels(tmp_path: Path, monkeypatch, capsys, asset: GetAsset, model_path: str,
                            tokenizer_model: str):
    monkeypatch.chdir(tmp_path)
    copy_head(asset, tmp_path, "cfimdb-dev.txt", 3)
    copy_head(asset, tmp_path, "cfimdb-label-mapping.json", 1)
    (tmp_path / "data" / "cfimdb-test.txt").write_text("-1 ||| A hidden label .\n-1 ||| Another one .\n")
    prompt = ["--option", "prompt", "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model]
    run_llama.main(prompt)
    assert "test acc :: meaningless: data/cfimdb-test.txt has placeholder labels (-1)" in capsys.readouterr().out
    _, sents = read_predictions(tmp_path / "cfimdb-test-prompting-output.txt", 2)
    suffix = "Is this movie bad or good? This movie is "
    assert sents == [f"A hidden label . {suffix}", f"Another one . {suffix}"]
    (tmp_path / "data" / "cfimdb-dev.txt").write_text("-1 ||| Dev labels are needed .\n")
    with pytest.raises(InputError, match=r"cfimdb-dev\.txt:1: label -1 is not one of 0 … 1 \("):
        run_llama.main(prompt)


def test_prompt_suffix_is_kept_whole_when_sentences_are_cut(asset: GetAsset, tokenizer_model: str):
    suffix = run_llama.prompt_suffix(["awful", "bad", "average", "good", "excellent"])
    assert suffix == "Is this movie awful, bad, average, good, or excellent? This movie is "
    assert run_llama.prompt_suffix(["bad", "good"]) == "Is this movie bad or good? This movie is "
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    suffix_ids = tokenizer.sp_model.encode(suffix)
    path = str(asset("data/sst-dev.txt"))
    short = run_llama.create_data(path, Tokenizer(3, tokenizer_model=tokenizer_model), 5, suffix)
    for text, ids in zip(short.sentences[:20], short.token_ids):
        sentence = text.removesuffix(f" {suffix}")
        assert ids == [tokenizer.bos_id] + tokenizer.encode(sentence, bos=False, eos=False)[:3] + suffix_ids


# ---- training that cannot go on ----
def sst_head(asset: GetAsset, cwd: Path) -> None:
    copy_head(asset, cwd, "sst-train.txt", 8)
    copy_head(asset, cwd, "sst-dev.txt", 4)
    copy_head(asset, cwd, "sst-test.txt", 3)
    copy_head(asset, cwd, "sst-label-mapping.json", 1)


def test_non_finite_training_stops_the_run_and_saves_nothing_of_that_epoch(tmp_path: Path, monkeypatch,
                                                                          asset: GetAsset, model_path: str,
                                                                          tokenizer_model: str):
    """Epoch 1 runs at a learning rate that sends the weights to infinity: epoch 0's files are all that remain."""
    monkeypatch.chdir(tmp_path)
    sst_head(asset, tmp_path)
    train_epoch = trainer.train_epoch

    def exploding_in_epoch_1(model, optimizer, data, epoch, *values):
        for group in optimizer.param_groups:
            group["lr"] = 1e30 if epoch == 1 else 1e-3
        return train_epoch(model, optimizer, data, epoch, *values)

    monkeypatch.setattr(trainer, "train_epoch", exploding_in_epoch_1)
    with pytest.raises(InputError, match=r"^epoch 1: (the training loss became nan|the weight .* is no longer "
                                         r"finite), so nothing of this epoch was saved; try a lower --lr than 0\.001"):
        run_llama.main(["--option", "finetune", "--train", "data/sst-train.txt", "--epochs", "3", "--lr", "1e-3",
                        "--batch_size", "4", "--pretrained-model-path", model_path, "--tokenizer-model",
                        tokenizer_model])
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0]
    for name in ("finetune-3-0.001.pt", "finetune-3-0.001-last.pt"):
        saved = torch.load(tmp_path / name, weights_only=True)
        assert saved["epoch"] == 0 and all(torch.isfinite(t).all() for t in saved["model"].values())
    assert not list(tmp_path.glob("*output*")) and not list(tmp_path.glob("*.png"))


def test_a_best_checkpoint_gone_before_testing_is_one_clear_error(tmp_path: Path, monkeypatch, asset: GetAsset,
                                                                   model_path: str, tokenizer_model: str):
    monkeypatch.chdir(tmp_path)
    sst_head(asset, tmp_path)
    monkeypatch.setattr(run_llama, "train", lambda *args: [])  # as if the file had been removed while training
    with pytest.raises(InputError, match=r"finetune-1-0\.001\.pt: the best checkpoint of this run is missing"):
        run_llama.main(["--option", "finetune", "--train", "data/sst-train.txt", "--epochs", "1", "--lr", "1e-3",
                        "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model])


# ---- batching ----
@pytest.fixture(scope="module")
def sst_lengths(asset: GetAsset, tokenizer_model: str) -> list[int]:
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    split = run_llama.create_data(str(asset("data/sst-dev.txt")), tokenizer, 5)
    return [len(ids) for ids in split.token_ids]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("group_by_length", [True, False])
def test_batches_cover_every_example_once(sst_lengths: list[int], shuffle: bool, group_by_length: bool):
    torch.manual_seed(0)
    batches = splits.batch_order(sst_lengths, 80, shuffle, group_by_length)
    assert sorted(i for batch in batches for i in batch) == list(range(len(sst_lengths)))
    assert sorted(map(len, batches)) == [len(sst_lengths) % 80] + [80] * (len(sst_lengths) // 80)
    torch.manual_seed(0)
    assert splits.batch_order(sst_lengths, 80, shuffle, group_by_length) == batches  # seeded
    if not shuffle and not group_by_length:
        assert [i for batch in batches for i in batch] == list(range(len(sst_lengths)))


def test_group_by_length_cuts_padding(sst_lengths: list[int]):
    torch.manual_seed(0)
    plain = splits.batch_order(sst_lengths, 80, shuffle=True, group_by_length=False)
    grouped = splits.batch_order(sst_lengths, 80, shuffle=True, group_by_length=True)
    again = splits.batch_order(sst_lengths, 80, shuffle=True, group_by_length=True)
    assert grouped != again  # a new grouping each epoch
    fraction = splits.padded_fraction
    assert fraction(sst_lengths, grouped) < fraction(sst_lengths, plain) / 4
    computed = sum(len(b) * max(sst_lengths[i] for i in b) for b in plain)
    assert fraction(sst_lengths, plain) == pytest.approx((computed - sum(sst_lengths)) / computed)


def test_shuffled_batches_are_the_courses_dataloader_passes():
    """An epoch of the course's: two passes of a shuffling DataLoader (training, then its accuracy) and one of a plain
    one (dev). splits draws the same batches and leaves torch's global generator where the DataLoaders leave it."""
    examples = list(range(50))
    torch.manual_seed(7)
    loader = DataLoader(examples, shuffle=True, batch_size=8)
    expected = [[batch.tolist() for batch in loader] for _ in range(2)]
    list(DataLoader(examples, shuffle=False, batch_size=8))
    after = torch.rand(3)
    torch.manual_seed(7)
    found = [splits.shuffled_batches([1] * len(examples), 8, group_by_length=False) for _ in range(2)]
    splits.loader_seed()
    assert found == expected and found[0] != found[1]
    assert torch.equal(torch.rand(3), after)


class LengthMod5(torch.nn.Module):
    """A classifier that predicts each sentence's length in tokens mod 5: predictions known in advance."""

    def forward(self, token_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(lengths % 5, 5).float()


def test_evaluation_order_does_not_depend_on_batches(asset: GetAsset, model_path: str, tokenizer_model: str):
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    full = run_llama.create_data(str(asset("data/sst-dev.txt")), tokenizer, 5)
    split = splits.Split(full.path, full.sentences[:40], full.labels[:40], full.token_ids[:40])
    cpu = torch.device("cpu")
    data = run_llama.LlamaDataset(split, tokenizer.pad_id, cpu)
    plain_batches = splits.batch_order(data.lengths, 8, False, False)
    grouped_batches = splits.batch_order(data.lengths, 8, True, True)
    # each prediction lands at its example's place (a random tiny model may predict one label throughout)
    expected = [length % 5 for length in data.lengths]
    assert len(set(expected)) == 5
    for batches in (plain_batches, grouped_batches):
        assert trainer.model_eval(LengthMod5(), data, batches, "float32") == expected
    # and with --causal, padding other sentences to another width changes no prediction of a real classifier
    model = LlamaEmbeddingClassifier(ClassifierConfig(model_path, 5, causal=True))
    plain = trainer.model_eval(model, data, plain_batches, "float32")
    assert trainer.model_eval(model, data, grouped_batches, "float32") == plain


# ---- what the course fixes, pinned with the course's literal values ----
COURSE_PREFIX = ("I have wanted to see this thriller for a while, and it didn't disappoint. "
                 "Keanu Reeves, playing the hero John Wick, is")


def test_generate_continues_the_courses_prompt_as_the_course_does(tmp_path: Path, monkeypatch, model_path: str,
                                                                   tokenizer_model: str):
    """BOS and the course's prompt, 75 new tokens at temperature 0.0 and then 1.0, into the course's two files."""
    calls = []
    load = run_llama.load_pretrained

    def load_recording_generate(*args, **kwargs):
        llama = load(*args, **kwargs)
        generate = llama.generate

        def recording(*a, **kw):
            bound = inspect.signature(generate).bind(*a, **kw)
            bound.apply_defaults()
            idx, max_new_tokens, temperature = list(bound.arguments.values())[:3]  # the course's parameters
            calls.append((idx.tolist(), max_new_tokens, temperature))
            return generate(*a, **kw)

        llama.generate = recording
        return llama

    monkeypatch.setattr(run_llama, "load_pretrained", load_recording_generate)
    monkeypatch.chdir(tmp_path)
    run_llama.main(["--option", "generate", "--pretrained-model-path", model_path,
                    "--tokenizer-model", tokenizer_model])
    prompt = [1] + Tokenizer(tokenizer_model=tokenizer_model).sp_model.encode(COURSE_PREFIX)  # 1: BOS
    assert calls == [([prompt], 75, 0.0), ([prompt], 75, 1.0)]
    for name in ("generated-sentence-temp-0.txt", "generated-sentence-temp-1.txt"):
        assert (tmp_path / name).read_text(encoding="utf-8").startswith(COURSE_PREFIX)


def test_prompt_suffix_is_the_courses():
    assert run_llama.prompt_suffix(["bad", "good"]) == "Is this movie bad or good? This movie is "
    assert run_llama.prompt_suffix(["sad", "flat", "fun"]) == "Is this movie sad, flat, or fun? This movie is "
    assert run_llama.prompt_suffix(["awful", "bad", "average", "good", "excellent"]) == \
        "Is this movie awful, bad, average, good, or excellent? This movie is "


def test_seed_everything_defaults_to_the_courses_seed():
    options.seed_everything()
    drawn = random.random(), float(np.random.rand()), torch.rand(1).item()
    random.seed(11711)
    np.random.seed(11711)
    torch.manual_seed(11711)
    assert drawn == (random.random(), float(np.random.rand()), torch.rand(1).item())


def test_training_batches_are_reshuffled_every_epoch(tmp_path: Path, monkeypatch, asset: GetAsset, model_path: str,
                                                     tokenizer_model: str):
    """As the course's DataLoader(shuffle=True): each epoch goes through the training set in a new random order."""
    monkeypatch.chdir(tmp_path)
    train = copy_head(asset, tmp_path, "sst-train.txt", 16)
    for name, n in (("sst-dev.txt", 4), ("sst-test.txt", 2), ("sst-label-mapping.json", 1)):
        copy_head(asset, tmp_path, name, n)
    seen = []

    def record(module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, LlamaEmbeddingClassifier) and module.training:
            token_ids, lengths = args[:2]
            seen.extend(row[:length].tolist() for row, length in zip(token_ids, lengths))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        run_llama.main(["--option", "finetune", "--train", "data/sst-train.txt", "--epochs", "2", "--batch_size", "4",
                        "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model])
    finally:
        hook.remove()
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    ids = [tokenizer.encode(sentence, bos=True, eos=False) for sentence in sentences(train)]
    order = [ids.index(x) for x in seen]
    first, second = order[:16], order[16:]
    assert sorted(first) == sorted(second) == list(range(16))  # every example once per epoch
    assert first != list(range(16)) and second != first  # a 1 in 16! chance for each, were they random


class MakeDir:
    """Unpickling it creates a folder: it shows whether a load ran code the file chose."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return os.makedirs, (self.path,)


def test_best_checkpoint_is_reloaded_with_weights_only(tmp_path: Path):
    """The course's test() reloads the best checkpoint with torch.load; here it takes only tensors and plain data."""
    marker = tmp_path / "code-ran"
    args = options.parse_args(["--option", "finetune", "--train", "data/sst-train.txt"])
    args.filepath = str(tmp_path / "finetune-5-2e-05.pt")
    torch.save({"model": {}, "payload": MakeDir(marker)}, args.filepath)
    with pytest.raises(Exception):
        run_llama.test(args)
    assert not marker.exists()


def test_course_evaluation_keeps_the_courses_batches():
    lengths = [5, 9, 2, 7, 3, 8, 4]
    course = [[0, 1, 2], [3, 4, 5], [6]]
    assert splits.eval_order(lengths, 3, group_by_length=True, causal=False) == course
    assert splits.eval_order(lengths, 3, group_by_length=False, causal=True) == course
    assert splits.eval_order(lengths, 3, group_by_length=True, causal=True) == [[2, 4, 6], [0, 3, 5], [1]]


# ---- devices ----
@pytest.mark.parametrize("cuda, mps, local_rank, expected", [(True, True, None, "cuda:0"), (True, False, "1", "cuda:1"),
                                                             (False, True, None, "mps"), (False, True, "1", "mps")])
def test_use_gpu_picks_cuda_else_apples_mps(monkeypatch, cuda: bool, mps: bool, local_rank: str | None,
                                             expected: str):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)  # torchrun's process 1
    assert run_llama.get_device(use_gpu=True, dtype="float32") == torch.device(expected)
    assert run_llama.get_device(use_gpu=False, dtype="float32") == torch.device("cpu")


@pytest.mark.parametrize("cuda_build, mps_built, found", [
    (None, False, "built without CUDA; built without Apple's mps"),
    ("12.4", True, "built for CUDA 12.4, no CUDA GPU seen; no Apple GPU seen by its mps backend"),
])
def test_use_gpu_without_a_gpu_names_what_was_found(monkeypatch, cuda_build: str | None, mps_built: bool,
                                                     found: str):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: mps_built)
    with pytest.raises(InputError) as e:
        run_llama.get_device(use_gpu=True, dtype="float32")
    assert str(e.value) == (f"--use_gpu: PyTorch {torch.__version__} finds only the CPU here ({found}): run without "
                            "--use_gpu to use the CPU")


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="this machine has a GPU")
def test_use_gpu_on_a_machine_without_a_gpu_is_one_line(tmp_path: Path, asset_cache: Path, model_path: str,
                                                        tokenizer_model: str):
    result = run(tmp_path, asset_cache, "--option", "generate", "--use_gpu", "--pretrained-model-path", model_path,
                 "--tokenizer-model", tokenizer_model)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: --use_gpu: PyTorch {torch.__version__} finds only the CPU here (")
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_unavailable_hardware_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match="--use_gpu: PyTorch .* finds only the CPU"):
        run_llama.get_device(use_gpu=True, dtype="float32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "Old GPU")
    with pytest.raises(InputError, match="the GPU Old GPU has no bfloat16"):
        run_llama.get_device(use_gpu=True, dtype="bfloat16")
    assert run_llama.get_device(use_gpu=False, dtype="bfloat16").type == "cpu"


@pytest.mark.parametrize("abbreviation", ["--cau", "--pretrained-model", "--opt=prompt"])
def test_an_abbreviated_flag_is_not_taken_for_the_flag(capsys, abbreviation: str):
    with pytest.raises(SystemExit) as e:
        options.parse_args([abbreviation])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: unrecognized arguments: {abbreviation}")
