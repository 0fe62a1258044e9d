"""Every kind of checkpoint minllama reads and writes, described here once, with one reader and one writer each.

Llama checkpoints: (model_args, state_dict), with the course's tensor names. Reader: `read_llama` (load_pretrained's,
which also gives a fine-tuned classifier's head); writers: `save_checkpoint` (.pt) and `write_llama2c_bin` (.bin).
Three formats, told apart by their first bytes, not the name:
  * a torch.save zip of {"model_args": ..., "model": state_dict}: the course's stories42M.pt, a checkpoint of
    llama2.c's train.py (attention weights wq/wk/wv/wo, `norm_eps`, maybe torch.compile's `_orig_mod.` prefix: the
    names LLAMA2C_NAMES renames, `_course_names`), or a fine-tuned classifier of run_llama.py (below), whose Llama is
    its "llama." tensors, beside the head CLASSIFIER_HEAD;
  * a llama2.c legacy `.bin` export: a 7 x int32 header, then float32 tensors;
  * a llama2.c version-1 `.bin` export: a 256-byte header starting with the magic "ak42", then float32 tensors.
In a `.bin`, each per-layer tensor kind is stored for all layers before the next kind, in the order of BIN_ORDER,
which drives both the reader and the writer. The Hugging Face export (convert.py) holds the same tensors under
transformers' names (HF_NAMES, HF_LAYER_NAMES: `hf_state_dict`), the query and key rows of each head reordered for
its rotary layout (`half_split_rows`).

Classifier checkpoints of run_llama.py --option finetune and lora (reader `read_classifier_checkpoint`, writer
`save_classifier_checkpoint`; trainer.py fills them, classifier.load_weights loads their weights), named after
--option, --epochs, --lr (and -seedN after them for a --seed other than the course's 1337):
    finetune-{epochs}-{lr}.pt       the checkpoint of the best dev accuracy, written whenever it improves
    finetune-{epochs}-{lr}-last.pt  the checkpoint of the last epoch, written after each; --resume goes on from it
Both are a torch.save of plain data (torch.load(..., weights_only=True) reads them): a dict of SAVED and weights,
    "model_args"    the LlamaConfig fields of the model, as a dict
    "model"         finetune: the LlamaEmbeddingClassifier state dict, "llama.*" (course names), "classifier_head.*"
    "lora"          lora, instead of "model": the adapters ("llama.layers.{i}.attention.compute_query.lora_A", ...)
                    and "classifier_head.*" (lora.lora_state_dict), which load onto the base model
                    model_config["pretrained_model_path"]
    "base_digest"   lora: weights_digest of that base model's weights, which must match when loading
    "optim"         the AdamW state dict (not in lora's best checkpoint, which holds only what predicting needs)
    "model_config"  the ClassifierConfig fields (pretrained_model_path, num_labels, hidden_dropout_prob, option,
                    lora_rank, lora_alpha, lora_dropout, lora_targets, causal)
    "label_names"   the label names, label i being label_names[i]
    "args"          vars(args): the command line, plain values only
    "epoch"         the epoch (from 0) after which it was saved
    "best_dev_acc"  the best dev accuracy up to that epoch
and the last checkpoint also (SAVED_LAST)
    "rng"           the random generators' states of each process (trainer.rng_state), by rank
    "run"           the run's id in metrics.jsonl: the time it started
    "metrics"       the run's metrics.jsonl records so far
    "inputs_sha256" the sha256 of the bytes of --train, --dev, --tokenizer-model and --pretrained-model-path, by
                    their argument names (train, dev, tokenizer_model, pretrained_model_path), which a resumed run
                    must be given again
A LoRA checkpoint is not a Llama checkpoint: read_llama refuses it (LoraCheckpointError); convert.py exports its
base model with the adapters merged in.

Reading trusts nothing in the file and checks each fact once. The file is read by files.read (`read_file`), so a FIFO
works too; a torch.save zip is unpickled from those bytes, once the CRC-32 of every entry matches, by
torch.load(weights_only=True), which unpickles tensors and plain data only. Its objects are walked once each
(`_tensors`, bounded in depth and number), and every tensor must hold values, of a dtype checkpoints hold, finite
(`check_tensors`); model_args are checked by LlamaConfig.from_model_args (hidden_dim, which llama2.c's train.py leaves
out, from w1's rows); the tensors' names and shapes by the table TENSORS (`_course_state_dict`); a classifier
checkpoint's other fields by FIELDS, for what reads them. A file that cannot be used raises files.InputError, naming
the file and what it is: missing parts, corrupt (damaged or truncated), legacy (torch.save's old non-zip format),
unsafe (pickled code), another kind of file, tensors that do not fit or that hold NaN or infinity, fields out of
range. Writing goes through files.write_atomically (a temporary name, then renamed), so a process killed at
any moment leaves the previous file whole.
"""
import hashlib
import io
import math
import os
import re
import struct
import typing
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch

from config import ATTENTION_PROJECTIONS, ClassifierConfig, LlamaConfig, fits_type, lora_problem, shown
import files
from files import InputError, write_atomically
from rope import precompute_freqs

# kind: (course name, "{}" standing for the layer index; shape, in terms of the sizes made by `dimension_sizes`)
TENSORS = {
    "tok_embeddings": ("tok_embeddings.weight", ("vocab_size", "dim")),
    "attention_norm": ("layers.{}.attention_norm.weight", ("dim",)),
    "wq": ("layers.{}.attention.compute_query.weight", ("q_dim", "dim")),
    "wk": ("layers.{}.attention.compute_key.weight", ("kv_dim", "dim")),
    "wv": ("layers.{}.attention.compute_value.weight", ("kv_dim", "dim")),
    "wo": ("layers.{}.attention.compute_output.weight", ("dim", "q_dim")),
    "ffn_norm": ("layers.{}.ffn_norm.weight", ("dim",)),
    "w1": ("layers.{}.feed_forward.w1.weight", ("hidden_dim", "dim")),
    "w2": ("layers.{}.feed_forward.w2.weight", ("dim", "hidden_dim")),
    "w3": ("layers.{}.feed_forward.w3.weight", ("hidden_dim", "dim")),
    "norm": ("norm.weight", ("dim",)),
    "freqs_cos": ("freqs_cos", ("max_seq_len", "half_head_dim")),  # legacy only: rotary tables nobody reads
    "freqs_sin": ("freqs_sin", ("max_seq_len", "half_head_dim")),
    "output": ("output.weight", ("vocab_size", "dim")),  # only when the classifier is not shared
}
ROTARY_TABLES = ("freqs_cos", "freqs_sin")
BIN_ORDER = {
    0: ("tok_embeddings", "attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3", "norm",
        "freqs_cos", "freqs_sin", "output"),
    1: ("attention_norm", "ffn_norm", "norm", "tok_embeddings", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"),
}
BIN_HEADER = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len")  # int32 each
V1_MAGIC, V1_HEADER_BYTES = 0x616B3432, 256  # "ak42" read as a little-endian uint32
LLAMA2C_NAMES = {"attention.wq.": "attention.compute_query.", "attention.wk.": "attention.compute_key.",
                 "attention.wv.": "attention.compute_value.", "attention.wo.": "attention.compute_output."}
LLAMA2C_ARGS = {"norm_eps": "layer_norm_eps"}
HF_NAMES = {  # course name -> the name in transformers' LlamaForCausalLM
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
HF_LAYER_NAMES = {  # within layers.N -> within model.layers.N
    "attention.compute_query.weight": "self_attn.q_proj.weight",
    "attention.compute_key.weight": "self_attn.k_proj.weight",
    "attention.compute_value.weight": "self_attn.v_proj.weight",
    "attention.compute_output.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
COURSE_KINDS = tuple(kind for kind in TENSORS if kind not in ROTARY_TABLES)
CLASSIFIER_PREFIX = "llama."  # run_llama.py's LlamaEmbeddingClassifier holds its Llama as `self.llama` ...
CLASSIFIER_HEAD = ("classifier_head.weight", "classifier_head.bias")  # ... beside a linear head of its own
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive ...
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # ... or, before PyTorch 1.6, a pickle
SAVED = {"model_args": dict, "model_config": dict, "label_names": list, "args": dict, "epoch": int,
         "best_dev_acc": float}  # what each classifier checkpoint holds besides its weights, with its type
SAVED_LAST = {"optim": dict, "rng": list, "run": str, "metrics": list, "inputs_sha256": dict}  # and the last one
MAX_DEPTH = 100  # how deeply a torch.save file's objects may nest: a checkpoint's deepest are 5 ('rng/0/python/1/0')
MAX_OBJECTS = 10**7  # the items its dicts, lists and tuples may hold in all: a checkpoint's are some thousands
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")  # the weights' dtypes
SAVED_DTYPES = {*(getattr(torch, name) for name in FLOAT_DTYPES), torch.int64, torch.int32, torch.int16, torch.int8,
                torch.uint8, torch.bool}  # the tensors' dtypes: the weights', an optimizer's steps, the generators'
RECORDED_SINCE = {"base_digest": "the digest of the LoRA base model's weights",
                  "inputs_sha256": "the sha256 of the dev set, tokenizer and base checkpoint"}  # earlier ones lack


class LoraCheckpointError(InputError):
    """A LoRA checkpoint of run_llama.py, read where a whole Llama is expected: it holds only adapters and a head."""


class LlamaCheckpoint(NamedTuple):
    """A Llama checkpoint: model_args as stored (llama2.c's names renamed), their config, the Llama's state dict
    under course names (with both output and embedding), and a fine-tuned classifier's head ({} for other files)."""

    model_args: dict
    config: LlamaConfig
    state_dict: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]


def read_llama(path: str | os.PathLike, **overrides) -> LlamaCheckpoint:
    """Read a Llama checkpoint of any format, its config taking `overrides` (e.g. causal=True)."""
    data = read_file(path)
    if data.startswith((ZIP_MAGIC, LEGACY_MAGIC)):
        return _course_checkpoint(read_torch_file(path, data), path, overrides)
    return _read_bin(data, path, overrides)


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of the checkpoint file `path` (files.read); a missing, empty or unreadable file is refused."""
    data, _ = files.read(path, "a checkpoint file", missing=f"checkpoint not found: {path}")
    if not data:
        raise InputError(f"{path}: empty file, not a checkpoint")
    return data


def read_torch_file(path: str | os.PathLike, data: bytes | None = None) -> object:
    """What the torch.save file `path` (whose bytes are `data`, if read already) holds, on the CPU, once the
    archive's checksums match, its pickle holds only tensors and plain data (weights_only), and its tensors pass
    check_tensors."""
    data = read_file(path) if data is None else data
    if data.startswith(LEGACY_MAGIC):
        raise InputError(f"{path}: legacy torch.save format (a pickle, as PyTorch wrote before 1.6), which has "
                              "no checksums and is not read: load it with torch.load and save it again")
    if not data.startswith(ZIP_MAGIC):
        raise InputError(f"{path}: not a torch.save file (it does not start as a zip archive)")
    try:  # a damaged archive can make zipfile raise nearly anything
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad_entry = archive.testzip()  # every entry's CRC-32, over the bytes in memory (BytesIO copies none)
    except Exception as e:
        raise InputError(f"{path}: corrupt: a damaged or truncated zip archive ({_first_line(e)})") from None
    if bad_entry is not None:
        raise InputError(f"{path}: corrupt: the bytes of {bad_entry!r} do not match their CRC-32 checksum")
    try:
        with warnings.catch_warnings():  # torch ≥ 2.14 warns on loading a sparse tensor, which check_tensors refuses
            warnings.filterwarnings("ignore", "Validating sparse tensor invariants", UserWarning)
            saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # the checksums match, so the file is as torch.save (or someone else) wrote it
        message = str(e)
        if "Weights only load failed" in message:
            found = re.search(r"Unsupported global: GLOBAL (\S+)|Unsupported operand \S+", message)
            raise InputError(f"{path}: unsafe: its pickle holds objects other than tensors and plain data "
                                  f"({found[0] if found else 'not allowed by torch.load(weights_only=True)'}), which "
                                  "unpickling could turn into running code; it was not loaded") from None
        raise InputError(f"{path}: not a readable torch.save file ({_first_line(e)})") from None
    check_tensors(_tensors(saved, path), path)
    return saved


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _tensors(saved: object, source: str | os.PathLike) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in the nested dicts, lists and tuples `saved` (read from `source`), named by
    the keys on the first path to it, joined with "/".

    Each object is visited once, however often it is referred to (x = [x, x], 64 times over, is 65 lists, not 2⁶⁴
    paths), from a stack rather than by recursion; objects nested more than MAX_DEPTH deep, or more than
    MAX_OBJECTS items in all, are refused, naming the file.
    """
    seen, items = set(), 0
    stack: list[tuple[object, str, object, int]] = [(saved, "", None, 0)]  # object, its parent's name, key, depth
    while stack:
        obj, parent, key, depth = stack.pop()
        if id(obj) in seen or not isinstance(obj, (torch.Tensor, dict, list, tuple)):
            continue
        seen.add(id(obj))  # `saved` holds every object, so no id is reused during the walk
        name = "" if depth == 0 else f"{parent}/{key}" if parent else str(key)
        if isinstance(obj, torch.Tensor):
            yield name, obj
            continue
        if depth == MAX_DEPTH:
            raise InputError(f"{source}: not a checkpoint: its objects nest more than {MAX_DEPTH} deep (under "
                             f"{shown(name.split('/')[0])})")
        children = list(obj.items() if isinstance(obj, dict) else enumerate(obj))
        items += len(children)
        if items > MAX_OBJECTS:
            raise InputError(f"{source}: not a checkpoint: it holds more than {MAX_OBJECTS} objects in its dicts, "
                             "lists and tuples")
        stack.extend((value, name, child, depth + 1) for child, value in reversed(children))


def check_tensors(tensors: typing.Iterable[tuple[str, torch.Tensor]], source: str | os.PathLike) -> None:
    """Refuse the first tensor that is not of a checkpoint (naming it, its dtype and device, and `source`): one
    without values (on PyTorch's meta device), sparse, of a dtype that is not SAVED_DTYPES (float8, complex, ...),
    or of floating point holding NaN or infinity."""
    for name, tensor in tensors:
        if tensor.device.type != "cpu":  # torch.load(map_location="cpu") moves every tensor that has values
            raise InputError(f"{source}: tensor {name!r} ({tensor.dtype}) is on the {tensor.device.type} device, "
                             "which holds its shape but no values")
        if tensor.layout != torch.strided:
            raise InputError(f"{source}: tensor {name!r} is stored as {tensor.layout}, not as a dense tensor")
        if tensor.dtype not in SAVED_DTYPES:
            raise InputError(f"{source}: tensor {name!r} holds {tensor.dtype} (on {tensor.device}), which no "
                             f"checkpoint holds: weights are {', '.join(FLOAT_DTYPES)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            raise InputError(f"{source}: tensor {name!r} holds {nan} NaN and {inf} infinite value(s) out of "
                             f"{tensor.numel()}: the weights are damaged")


def _course_checkpoint(ckpt: object, path: str | os.PathLike, overrides: dict) -> LlamaCheckpoint:
    """The Llama checkpoint (and classifier head) that a torch.save file `path` holds."""
    if isinstance(ckpt, dict) and "lora" in ckpt:
        raise LoraCheckpointError(f"{path}: a LoRA classifier of run_llama.py, which holds only its adapters and "
                                  f"head; `python convert.py {path} --to llama2c OUT.bin` writes its base model with "
                                  "them merged")
    if not isinstance(ckpt, dict) or not {"model_args", "model"} <= ckpt.keys():
        raise InputError(f"{path}: a torch.save file, but not a checkpoint: not a dict with 'model_args' and "
                              "'model'")
    check_state_dict(ckpt["model"], f"{path}: 'model'")
    state_dict, head = _split_classifier(_course_names(ckpt["model"]), str(path))
    model_args, config, state_dict = _fitting(ckpt["model_args"], state_dict, str(path), overrides)
    weight, bias = (tuple(head[name].shape) if head else None for name in CLASSIFIER_HEAD)
    if head and (len(weight) != 2 or weight[1] != config.dim or bias != weight[:1]):
        raise InputError(f"{path}: classifier head of shapes {weight} and {bias}; expected (n_labels, "
                              f"dim={config.dim}) and (n_labels,)")
    return LlamaCheckpoint(model_args, config, state_dict, head)


def read_classifier_checkpoint(path: str | os.PathLike, last: bool = False) -> dict:
    """What a checkpoint of run_llama.py --option finetune or lora holds (`last`: the last one, which --resume reads),
    laid out as the module docstring says, once read by read_torch_file and checked: its keys, their types, and the
    weights' names and dtypes. Putting the weights into a classifier is classifier.load_weights'."""
    return _classifier_checkpoint(read_torch_file(path), path, last)


def save_classifier_checkpoint(path: str | os.PathLike, saved: dict, last: bool = False) -> None:
    """Write the checkpoint `saved` of run_llama.py (`last`: the last one) to `path`, once its layout passes the
    checks that read_classifier_checkpoint makes, so that what is written can be read back."""
    _classifier_checkpoint(saved, f"writing {path}", last)
    write_atomically(Path(path), lambda f: torch.save(saved, f))


def _is_epoch(value: object) -> bool:
    """Whether `value` is an epoch: an int (not a bool) from 0."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_record(value: object) -> bool:
    """Whether `value` is a metrics record that metrics.plot draws: a dict with an epoch and finite numbers under
    PLOTTED."""
    return isinstance(value, dict) and _is_epoch(value.get("epoch")) \
        and all(fits_type(value.get(key), float) for key in PLOTTED)


def _is_flag(item: tuple[object, object]) -> bool:
    """Whether `item` is a flag of vars(args): a str, and None, a bool, a number, a str or a list of them."""
    name, value = item
    plain = (type(None), bool, int, float, str)
    return isinstance(name, str) and (isinstance(value, plain) or isinstance(value, (list, tuple))
                                      and all(isinstance(v, plain) for v in value))


PLOTTED = ("loss", "train_acc", "dev_acc")  # what metrics.plot reads of a record, besides its epoch
SHA256 = re.compile("[0-9a-f]{64}")
# what the fields of a classifier checkpoint hold besides their type, for what reads them: key -> (test of the value,
# or with `each` of each item of the list or dict, what it must be)
FIELDS = {
    "epoch": (_is_epoch, False, "an epoch (an int from 0)"),
    "best_dev_acc": (lambda acc: 0.0 <= acc <= 1.0, False, "an accuracy (a float in [0, 1])"),
    "inputs_sha256": (lambda item: isinstance(item[0], str) and isinstance(item[1], str) and SHA256.fullmatch(item[1]),
                      True, "an input's sha256 (a flag's name and 64 hexadecimal digits)"),
    "base_digest": (SHA256.fullmatch, False, "a sha256 (64 hexadecimal digits)"),
    "label_names": (lambda name: isinstance(name, str), True, "a label name (a str)"),
    "metrics": (_is_record, True, f"a metrics record (a dict of an int 'epoch' from 0 and finite numbers {PLOTTED})"),
    "args": (_is_flag, True, "a flag (a name, and None, a bool, a number, a str or a list of them)"),
}


def _classifier_checkpoint(saved: object, path: str | os.PathLike, last: bool) -> dict:
    """`saved` (read from `path`, or about to be written there), once checked to be a classifier checkpoint of
    run_llama.py: SAVED (and SAVED_LAST if `last`) with their types and FIELDS' values, "model" or "lora" (with
    "base_digest") of floating-point tensors, model_args a LlamaConfig's, and model_config a ClassifierConfig's
    (`_classifier_config`)."""
    kind = "a last checkpoint" if last else "a checkpoint"
    if not isinstance(saved, dict):
        raise InputError(f"{path}: not {kind} of run_llama.py --option finetune or lora: it holds a "
                              f"{type(saved).__name__}, not a dict")
    weights = "lora" if "lora" in saved else "model"
    expected = {**SAVED, weights: dict, **({"base_digest": str} if weights == "lora" else {}),
                **(SAVED_LAST if last else {})}
    missing = sorted(expected.keys() - saved.keys())
    if missing and set(missing) <= RECORDED_SINCE.keys():
        raise InputError(f"{path}: written by an earlier minllama, which did not record "
                              f"{' and '.join(RECORDED_SINCE[key] for key in missing)}: train it again")
    if missing:
        raise InputError(f"{path}: not {kind} of run_llama.py --option finetune or lora: it lacks {missing}")
    for key, value_type in expected.items():
        if not isinstance(saved[key], value_type):
            raise InputError(f"{path}: {key!r} is a {type(saved[key]).__name__}, not a {value_type.__name__}")
        usable, each, what = FIELDS.get(key, (None, False, ""))
        value = saved[key]
        if usable and not each and not usable(value):
            raise InputError(f"{path}: {key!r} is {shown(value)}, not {what}")
        for index, item in (value.items() if isinstance(value, dict) else enumerate(value)) if usable and each else ():
            if not usable((index, item) if isinstance(value, dict) else item):
                raise InputError(f"{path}: {key!r} item {shown(index)} is {shown(item)}, not {what}")
    check_state_dict(saved[weights], f"{path}: {weights!r}")
    _classifier_config(saved, weights, str(path))
    return saved


def _classifier_config(saved: dict, weights: str, path: str) -> None:
    """Refuse a classifier checkpoint whose model_config is not a ClassifierConfig's fields, or not one that builds
    the classifier of its weights (`weights`, "model" or "lora"), labels and model_args; and model_args that
    LlamaConfig.from_model_args refuses."""
    config, config_types = saved["model_config"], typing.get_type_hints(ClassifierConfig)
    if config.keys() != config_types.keys():
        raise InputError(f"{path}: 'model_config' has the keys {shown(list(config))}, not a ClassifierConfig's "
                         f"{list(config_types)}")
    for key, value in config.items():
        if not fits_type(value, config_types[key]):
            expected = getattr(config_types[key], "__name__", str(config_types[key]))
            raise InputError(f"{path}: 'model_config' {key}={shown(value)} is not a finite {expected}")
    llama = _config(saved["model_args"], f"{path}: 'model_args'", {})
    labels, targets, option = config["num_labels"], config["lora_targets"], "lora" if weights == "lora" else "finetune"
    head = saved[weights].get(CLASSIFIER_HEAD[0])
    head_shape = (labels, llama.dim) if head is None else tuple(head.shape)  # a missing head: load_weights refuses it
    wrong = [  # (whether it is wrong, what)
        (config["option"] != option, f"option={config['option']!r}, but its weights are {option}'s"),
        (labels < 1, f"num_labels={labels}"),
        (labels != len(saved["label_names"]), f"num_labels={labels}, but it has {len(saved['label_names'])} labels"),
        (head_shape != (labels, llama.dim), f"num_labels={labels}, but its classifier head has shape {head_shape}"),
        (not 0.0 <= config["hidden_dropout_prob"] < 1.0, f"hidden_dropout_prob={config['hidden_dropout_prob']}"),
        (config["causal"] != llama.causal, f"causal={config['causal']}, but 'model_args' say causal={llama.causal}"),
        (option == "lora" and not 0 < len(targets) == len({*targets} & {*ATTENTION_PROJECTIONS}),
         f"lora_targets={shown(targets)}: not distinct names among {ATTENTION_PROJECTIONS}"),
        (option == "lora", lora_problem(config["lora_rank"], config["lora_alpha"], config["lora_dropout"])),
    ]
    problem = next((what for is_wrong, what in wrong if is_wrong and what), None)
    if problem:
        raise InputError(f"{path}: 'model_config' {problem}")


def check_state_dict(state_dict: object, source: str) -> None:
    """Refuse anything but a dict of floating-point tensors under string names."""
    if not isinstance(state_dict, dict):
        raise InputError(f"{source}: a {type(state_dict).__name__}, not a dict of tensors")
    for name, tensor in state_dict.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise InputError(f"{source}: entry {name!r} is a {type(tensor).__name__}, not a named tensor")
        if not tensor.is_floating_point():
            raise InputError(f"{source}: tensor {name!r} holds {tensor.dtype}, not floating-point weights")


def _split_classifier(state_dict: dict, source: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """A fine-tuned classifier's tensors split into the Llama's (prefix removed) and the head's; any other state
    dict is returned as it is, with an empty head."""
    names = dict(state_dict)
    if not any(name.startswith(CLASSIFIER_PREFIX) for name in names):
        return state_dict, {}
    head = {name: names.pop(name) for name in CLASSIFIER_HEAD if name in names}
    unexpected = sorted(name for name in names if not name.startswith(CLASSIFIER_PREFIX))
    if unexpected:
        raise InputError(f"{source}: a fine-tuned classifier ('{CLASSIFIER_PREFIX}' tensors), with unexpected "
                              f"tensor(s) {unexpected}; besides the Llama it may hold only {list(CLASSIFIER_HEAD)}")
    missing = [name for name in CLASSIFIER_HEAD if name not in head]
    if missing:
        raise InputError(f"{source}: a fine-tuned classifier ('{CLASSIFIER_PREFIX}' tensors) without {missing}")
    return {name.removeprefix(CLASSIFIER_PREFIX): tensor for name, tensor in names.items()}, head


def _course_names(state_dict: dict) -> dict:
    """`state_dict` under course names: without torch.compile's `_orig_mod.` prefix, llama2.c's names renamed."""
    names = {}
    for key, tensor in state_dict.items():
        name = key.removeprefix("_orig_mod.")
        for llama2c, course in LLAMA2C_NAMES.items():
            name = name.replace(llama2c, course)
        names[name] = tensor
    return names


def _fitting(model_args: object, names: dict, source: str, overrides: dict) -> tuple[dict, LlamaConfig, dict]:
    """(model_args with llama2.c's names renamed, the config they describe, the state dict `names`, under course
    names (_course_names), with its output), once LlamaConfig.from_model_args accepts them and the tensors fit.
    Where model_args lack hidden_dim (llama2.c's train.py keeps multiple_of only), the config reads it from w1's
    rows."""
    names = dict(names)
    if "output.weight" not in names and "tok_embeddings.weight" in names:
        names["output.weight"] = names["tok_embeddings.weight"]  # tied classifier
    w1, args = names.get(TENSORS["w1"][0].format(0)), model_args
    if isinstance(model_args, dict):
        model_args = args = {LLAMA2C_ARGS.get(key, key): value for key, value in model_args.items()}
        if args.get("hidden_dim") is None and w1 is not None:
            args = {**args, "hidden_dim": w1.shape[0]}
    config = _config(args, source, overrides)
    return model_args, config, _course_state_dict(names, config, source)


def _config(model_args: object, source: str, overrides: dict) -> LlamaConfig:
    """LlamaConfig.from_model_args, refusing with an InputError."""
    try:
        return LlamaConfig.from_model_args(model_args, source, **overrides)
    except ValueError as e:
        raise InputError(str(e)) from None


def _course_state_dict(state_dict: dict, config: LlamaConfig, source: str) -> dict[str, torch.Tensor]:
    """The one check of a state dict's names and shapes (course names) against the sizes of `config`."""
    if config.n_layers > len(state_dict):  # every layer has 9 tensors: most of them would be missing
        raise InputError(f"{source}: model_args say n_layers={config.n_layers}, but the file holds only "
                              f"{len(state_dict)} tensors")
    expected = _shapes(dimension_sizes(config), COURSE_KINDS)
    unexpected = sorted(state_dict.keys() - expected.keys())
    if unexpected:
        raise InputError(f"{source}: unexpected tensor(s) {unexpected}: not course or llama2.c names for this "
                              "model")
    for name, shape in expected.items():
        tensor = state_dict.get(name)
        if tensor is None or tuple(tensor.shape) != shape:
            found = "is missing" if tensor is None else f"has shape {tuple(tensor.shape)}"
            raise InputError(f"{source}: tensor {name!r} {found}; expected shape {shape}")
    return state_dict


def is_tied(state_dict: dict[str, torch.Tensor]) -> bool:
    """Whether the output projection equals the token embedding (tied: the formats then store it once)."""
    return torch.equal(state_dict["output.weight"], state_dict["tok_embeddings.weight"])


def dimension_sizes(config: LlamaConfig) -> dict[str, int]:
    """The sizes the shapes in TENSORS are written in: the config's, and the widths derived from them."""
    head_dim = config.head_dim
    return {**{f.name: getattr(config, f.name) for f in fields(config)}, "head_dim": head_dim,
            "q_dim": config.n_heads * head_dim, "kv_dim": config.n_kv_heads * head_dim, "half_head_dim": head_dim // 2}


def _n_floats(sizes: dict[str, int], kinds: tuple[str, ...]) -> int:
    """How many numbers the tensors of these kinds hold, computed without listing them (n_layers may be huge)."""
    return sum(math.prod(sizes[d] for d in dims) * (sizes["n_layers"] if "{}" in name else 1)
               for name, dims in (TENSORS[kind] for kind in kinds))


def _shapes(sizes: dict[str, int], kinds: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Name -> shape for the given kinds, in file order (each per-layer kind over all layers)."""
    shapes = {}
    for kind in kinds:
        name, dims = TENSORS[kind]
        for layer in range(sizes["n_layers"]) if "{}" in name else [None]:
            shapes[name.format(layer)] = tuple(sizes[d] for d in dims)
    return shapes


def _read_bin(data: bytes, path: str | os.PathLike, overrides: dict) -> LlamaCheckpoint:
    """The checkpoint in the llama2.c `.bin` whose bytes are `data`."""
    if len(data) >= 8 and struct.unpack_from("<I", data) == (V1_MAGIC,):
        (version,) = struct.unpack_from("<i", data, 4)
        if version != 1:
            raise InputError(f"{path}: unsupported llama2.c .bin version {version} (only legacy and version 1, "
                                  "float32, are supported; version 2 is int8-quantized)")
        if len(data) < V1_HEADER_BYTES:
            raise InputError(f"{path}: truncated llama2.c version-1 header ({len(data)} of 256 bytes)")
        model_args = dict(zip(BIN_HEADER, struct.unpack_from("<7i", data, 8)))
        if data[36] not in (0, 1):
            raise InputError(f"{path}: bad llama2.c version-1 header: shared-classifier flag is {data[36]}")
        header_bytes, shared = V1_HEADER_BYTES, bool(data[36])
        source = f"{path}: bad llama2.c version-1 header"
    else:
        if len(data) < 28:
            raise InputError(f"{path}: not a checkpoint (too short for any known format)")
        model_args = dict(zip(BIN_HEADER, struct.unpack_from("<7i", data)))
        version, header_bytes, shared = 0, 28, model_args["vocab_size"] > 0
        model_args["vocab_size"] = abs(model_args["vocab_size"])
        source = (f"{path}: not a checkpoint (not a torch.save zip, no llama2.c 'ak42' magic, and the first 28 "
                  "bytes are not a llama2.c legacy header)")
    config = _config(model_args, source, overrides)
    sizes = dimension_sizes(config)
    kinds = BIN_ORDER[version][:-1] if shared else BIN_ORDER[version]
    expected = header_bytes + 4 * _n_floats(sizes, kinds)
    if len(data) != expected:
        raise InputError(f"{path}: wrong size for a llama2.c version-{version} .bin with header {model_args}: "
                              f"expected {expected} bytes, found {len(data)}")
    state_dict, offset = {}, header_bytes
    for name, shape in _shapes(sizes, kinds).items():
        n = math.prod(shape)
        state_dict[name] = torch.from_numpy(np.frombuffer(data, "<f4", n, offset).reshape(shape).copy())
        offset += 4 * n
    for name in ROTARY_TABLES:
        state_dict.pop(name, None)
    check_tensors(state_dict.items(), path)
    if shared:
        state_dict["output.weight"] = state_dict["tok_embeddings.weight"]
    return LlamaCheckpoint(model_args, config, state_dict, {})


def half_split_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of a query or key projection (n_heads·head_dim, dim) for transformers' rotary layout.

    In each head, row 2i + c (pair i, component c) moves to row c·head_dim/2 + i: the even rows, then the odd ones.
    This is the `permute` of transformers' convert_llama_weights_to_hf.py.
    """
    rows, dim = weight.shape
    return weight.reshape(n_heads, rows // n_heads // 2, 2, dim).transpose(1, 2).reshape(rows, dim)


def hf_state_dict(state_dict: dict[str, torch.Tensor], config: LlamaConfig) -> dict[str, torch.Tensor]:
    """A Llama state dict (course names) under transformers' LlamaForCausalLM names, the query and key rows
    reordered by half_split_rows. lm_head.weight is always included (the embedding itself when tied)."""
    hf = {}
    for name, tensor in state_dict.items():
        if name.startswith("layers."):
            layer, within = name.removeprefix("layers.").split(".", 1)
            hf_name = f"model.layers.{layer}.{HF_LAYER_NAMES[within]}" if within in HF_LAYER_NAMES else None
        else:
            hf_name = HF_NAMES.get(name)
        if hf_name is None:
            raise ValueError(f"tensor {name!r} has no counterpart in transformers' LlamaForCausalLM")
        if name.endswith("attention.compute_query.weight"):
            tensor = half_split_rows(tensor, config.n_heads)
        elif name.endswith("attention.compute_key.weight"):
            tensor = half_split_rows(tensor, config.n_kv_heads)
        hf[hf_name] = tensor
    return hf


def write_llama2c_bin(path: str | os.PathLike, model_args: dict, state_dict: dict, version: int = 1) -> None:
    """Export to llama2.c's float32 `.bin` (version 0 = legacy, 1 = "ak42"); the classifier is shared iff equal."""
    if version not in BIN_ORDER:
        raise ValueError(f"{path}: can write llama2.c .bin versions {sorted(BIN_ORDER)}, not {version}")
    source = f"writing {path}"
    _, config, state_dict = _fitting(model_args, _course_names(state_dict), source, {})
    if config.layer_norm_eps != 1e-5:
        raise InputError(f"{source}: a llama2.c .bin cannot store layer_norm_eps={config.layer_norm_eps} "
                         "(llama2.c always uses 1e-5)")
    sizes = dimension_sizes(config)
    shared = is_tied(state_dict)
    header = [sizes[k] for k in BIN_HEADER]
    if version == 0:
        if not shared:  # a negative vocab_size says that the classifier follows
            header[BIN_HEADER.index("vocab_size")] *= -1
        header_bytes = struct.pack("<7i", *header)
    else:
        header_bytes = struct.pack("<Ii7iB", V1_MAGIC, 1, *header, shared).ljust(V1_HEADER_BYTES, b"\0")
    freqs_cos, freqs_sin = precompute_freqs(sizes["head_dim"], sizes["max_seq_len"])
    tensors = {**state_dict, "freqs_cos": freqs_cos, "freqs_sin": freqs_sin}
    kinds = BIN_ORDER[version][:-1] if shared else BIN_ORDER[version]

    def write(f: BinaryIO) -> None:
        f.write(header_bytes)
        for name in _shapes(sizes, kinds):
            f.write(tensors[name].detach().cpu().float().numpy().astype("<f4").tobytes())
    write_atomically(Path(path), write)


def save_checkpoint(path: str | os.PathLike, model_args: dict, state_dict: dict) -> None:
    """Save the course's torch.save layout {"model_args": ..., "model": state_dict}, with course names."""
    model_args, config, state_dict = _fitting(model_args, _course_names(state_dict), f"writing {path}", {})
    model_args = {f.name: getattr(config, f.name) for f in fields(config) if f.name in {*model_args, "hidden_dim"}}
    write_atomically(Path(path), lambda f: torch.save({"model_args": model_args, "model": state_dict}, f))


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors' names, dtypes, shapes and values, in name order: the same for the same weights,
    whichever file they were read from."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
