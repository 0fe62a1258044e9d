"""Tests for checkpoint.py: every format round-trips, the .bin layouts match llama2.c's, bad files are refused."""
import builtins
import contextlib
import hashlib
import re
import signal
import struct
import zipfile
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import checkpoint
from checkpoint import (LoraCheckpointError, read_classifier_checkpoint, read_llama, save_checkpoint,
                        save_classifier_checkpoint, weights_digest, write_llama2c_bin)
from config import ClassifierConfig
from files import InputError
from rope import precompute_freqs

ARGS = dict(dim=16, hidden_dim=40, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=37, max_seq_len=8)
LAYER_SHAPES = {  # written out here, independently of checkpoint.TENSORS: head_dim 4, kv_dim 8
    "attention_norm.weight": (16,), "attention.compute_query.weight": (16, 16),
    "attention.compute_key.weight": (8, 16), "attention.compute_value.weight": (8, 16),
    "attention.compute_output.weight": (16, 16), "ffn_norm.weight": (16,),
    "feed_forward.w1.weight": (40, 16), "feed_forward.w2.weight": (16, 40), "feed_forward.w3.weight": (40, 16),
}


def random_state_dict(shared: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"tok_embeddings.weight": torch.randn(37, 16, generator=g), "norm.weight": torch.randn(16, generator=g)}
    for layer in range(2):
        for name, shape in LAYER_SHAPES.items():
            sd[f"layers.{layer}.{name}"] = torch.randn(shape, generator=g)
    sd["output.weight"] = sd["tok_embeddings.weight"] if shared else torch.randn(37, 16, generator=g)
    return sd


def llama2c_bin_bytes(sd: dict[str, torch.Tensor], version: int, shared: bool) -> bytes:
    """The bytes llama2.c's export.py writes (legacy_export / version1_export), spelled out kind by kind."""
    def stacked(name: str) -> list[torch.Tensor]:
        return [sd[f"layers.{layer}.{name}"] for layer in range(2)]
    sizes = (16, 40, 2, 4, 2, 37, 8)
    norms = stacked("attention_norm.weight") + stacked("ffn_norm.weight") + [sd["norm.weight"]]
    attention = [t for w in ("query", "key", "value", "output") for t in stacked(f"attention.compute_{w}.weight")]
    ffn = [t for w in ("w1", "w2", "w3") for t in stacked(f"feed_forward.{w}.weight")]
    classifier = [] if shared else [sd["output.weight"]]
    if version == 0:
        header = struct.pack("<7i", *sizes[:5], 37 if shared else -37, 8)
        tensors = ([sd["tok_embeddings.weight"]] + stacked("attention_norm.weight") + attention
                   + stacked("ffn_norm.weight") + ffn + [sd["norm.weight"]] + list(precompute_freqs(4, 8)) + classifier)
    else:
        header = (struct.pack("<Ii", 0x616B3432, 1) + struct.pack("<7i", *sizes) + bytes([shared])).ljust(256, b"\0")
        tensors = norms + [sd["tok_embeddings.weight"]] + attention + ffn + classifier
    return header + b"".join(t.numpy().astype("<f4").tobytes() for t in tensors)


def assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("shared", [True, False])
def test_bin_round_trip_matches_llama2c_layout(tmp_path, version, shared):
    sd = random_state_dict(shared)
    path = tmp_path / "model.bin"
    write_llama2c_bin(path, ARGS, sd, version=version)
    assert path.read_bytes() == llama2c_bin_bytes(sd, version, shared)
    model_args, _, got, _ = read_llama(path)
    assert model_args == ARGS
    assert_same_state(got, sd)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_bin_writer_takes_hidden_dim_from_w1(tmp_path):
    args = {k: v for k, v in ARGS.items() if k != "hidden_dim"}
    write_llama2c_bin(tmp_path / "m.bin", args, random_state_dict(True))
    assert read_llama(tmp_path / "m.bin").model_args["hidden_dim"] == 40


def test_bin_writer_refuses_what_the_format_cannot_hold(tmp_path):
    with pytest.raises(InputError, match="layer_norm_eps"):
        write_llama2c_bin(tmp_path / "m.bin", dict(ARGS, layer_norm_eps=1e-6), random_state_dict(True))
    with pytest.raises(ValueError, match="versions"):
        write_llama2c_bin(tmp_path / "m.bin", ARGS, random_state_dict(True), version=2)
    sd = random_state_dict(True)
    sd["layers.1.feed_forward.w2.weight"] = torch.zeros(16, 41)
    with pytest.raises(InputError, match=r"layers\.1\.feed_forward\.w2\.weight.*\(16, 40\)"):
        write_llama2c_bin(tmp_path / "m.bin", ARGS, sd)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("prefix", ["", "_orig_mod."])
def test_course_pt_round_trip(tmp_path, prefix):
    sd = random_state_dict(shared=True)
    args = dict(ARGS, multiple_of=32, dropout=0.0, layer_norm_eps=1e-5)
    torch.save({"model_args": args, "model": {prefix + k: v for k, v in sd.items()}, "iter_num": 7}, tmp_path / "c.pt")
    model_args, _, got, _ = read_llama(tmp_path / "c.pt")
    assert model_args == args
    assert_same_state(got, sd)


def test_save_checkpoint_round_trip_and_tied_output(tmp_path):
    sd = random_state_dict(shared=False)
    save_checkpoint(tmp_path / "c.pt", ARGS, sd)
    assert_same_state(read_llama(tmp_path / "c.pt").state_dict, sd)
    untied = {k: v for k, v in random_state_dict(shared=True).items() if k != "output.weight"}
    save_checkpoint(tmp_path / "c.pt", ARGS, untied)
    _, _, got, _ = read_llama(tmp_path / "c.pt")
    assert torch.equal(got["output.weight"], untied["tok_embeddings.weight"])
    assert list(tmp_path.iterdir()) == [tmp_path / "c.pt"]


def test_llama2c_train_pt(tmp_path):
    sd = random_state_dict(shared=True)
    renames = {"compute_query": "wq", "compute_key": "wk", "compute_value": "wv", "compute_output": "wo"}
    llama2c_sd = {}
    for name, tensor in sd.items():
        for course, llama2c in renames.items():
            name = name.replace(course, llama2c)
        llama2c_sd["_orig_mod." + name] = tensor
    assert "_orig_mod.layers.0.attention.wq.weight" in llama2c_sd
    args = dict(ARGS, norm_eps=1e-6, multiple_of=32, dropout=0.1)
    args.pop("hidden_dim")
    torch.save({"model": llama2c_sd, "model_args": args, "optimizer": {}, "config": {"lr": 1.0}}, tmp_path / "t.pt")
    model_args, _, got, _ = read_llama(tmp_path / "t.pt")
    args["layer_norm_eps"] = args.pop("norm_eps")
    assert model_args == args
    assert_same_state(got, sd)


class NotATensor:
    pass


def test_pt_needing_arbitrary_unpickling_is_refused(tmp_path):
    torch.save({"model_args": ARGS, "model": random_state_dict(True), "extra": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match=r"evil\.pt: unsafe: .*GLOBAL test_checkpoint\.NotATensor"):
        read_llama(tmp_path / "evil.pt")


def test_pt_errors(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"model_args": dict(ARGS, rope_theta=1e4), "model": random_state_dict(True)}, path)
    with pytest.raises(InputError, match=r"c\.pt.*rope_theta"):
        read_llama(path)
    sd = random_state_dict(True)
    sd["layers.0.attention.bias"] = torch.zeros(16)
    torch.save({"model_args": ARGS, "model": sd}, path)
    with pytest.raises(InputError, match=r"c\.pt.*layers\.0\.attention\.bias"):
        read_llama(path)
    sd = random_state_dict(True)
    del sd["layers.1.ffn_norm.weight"]
    torch.save({"model_args": ARGS, "model": sd}, path)
    with pytest.raises(InputError, match=r"c\.pt.*layers\.1\.ffn_norm\.weight.*missing"):
        read_llama(path)
    torch.save(random_state_dict(True), path)  # a bare state dict
    with pytest.raises(InputError, match=r"c\.pt.*'model_args' and 'model'"):
        read_llama(path)
    torch.save({"model_args": ARGS, "model": random_state_dict(True)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"c\.pt: corrupt: a damaged or truncated zip archive"):
        read_llama(path)


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("change", [-1, -4000, 3])
def test_bin_of_wrong_size_is_refused(tmp_path, version, change):
    path = tmp_path / "m.bin"
    write_llama2c_bin(path, ARGS, random_state_dict(True), version=version)
    data = path.read_bytes()
    path.write_bytes(data[:change] if change < 0 else data + bytes(change))
    with pytest.raises(InputError, match=rf"m\.bin.*expected {len(data)} bytes, found {len(data) + change}"):
        read_llama(path)


def test_bin_bad_headers(tmp_path):
    path = tmp_path / "m.bin"
    write_llama2c_bin(path, ARGS, random_state_dict(True), version=1)
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<i", 2)
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"m\.bin.*unsupported llama2\.c \.bin version 2"):
        read_llama(path)
    data[4:8] = struct.pack("<i", 1)
    data[8:12] = struct.pack("<i", -16)  # dim
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"m\.bin.*bad llama2\.c version-1 header.*dim"):
        read_llama(path)
    data[8:12] = struct.pack("<i", 16)
    data[36] = 7  # shared-classifier flag
    path.write_bytes(data)
    with pytest.raises(InputError, match=r"m\.bin.*flag"):
        read_llama(path)


@pytest.mark.parametrize("content", [b"hello, this is a text file and not a model at all\n" * 20, bytes(1000), b"x"])
def test_not_a_checkpoint(tmp_path, content):
    (tmp_path / "notes.pt").write_bytes(content)
    with pytest.raises(InputError, match=r"notes\.pt.*not a checkpoint"):
        read_llama(tmp_path / "notes.pt")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.bin"):
        read_llama(tmp_path / "nope.bin")


def test_real_stories260k(tmp_path, asset):
    original = asset("stories260K.bin")
    model_args, _, sd, _ = read_llama(original)
    assert model_args == dict(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab_size=512,
                              max_seq_len=512)
    assert len(sd) == 2 + 5 * 9 + 1
    assert sd["tok_embeddings.weight"].shape == (512, 64) and sd["norm.weight"].shape == (64,)
    assert torch.equal(sd["output.weight"], sd["tok_embeddings.weight"])  # shared classifier
    assert sd["layers.4.attention.compute_query.weight"].shape == (64, 64)
    assert sd["layers.4.attention.compute_key.weight"].shape == (32, 64)
    assert sd["layers.4.attention.compute_output.weight"].shape == (64, 64)
    assert sd["layers.4.feed_forward.w1.weight"].shape == (172, 64)
    assert sd["layers.4.feed_forward.w2.weight"].shape == (64, 172)
    # trained RMSNorm gains sit well above zero, the matrices around it: a misplaced offset would mix them up
    for name in ["norm.weight"] + [f"layers.{i}.{n}_norm.weight" for i in range(5) for n in ("attention", "ffn")]:
        assert sd[name].mean() > 0.2, name
    assert all(t.mean().abs() < 0.05 for name, t in sd.items() if not name.endswith("norm.weight"))
    copy = tmp_path / "copy.bin"
    write_llama2c_bin(copy, model_args, sd, version=0)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (original, copy)]
    assert digest[0] == digest[1]  # byte for byte, so rope.precompute_freqs gives llama2.c's stored rotary tables


def finetuned_state_dict(prefix: str = "") -> dict[str, torch.Tensor]:
    """run_llama.py's LlamaEmbeddingClassifier: the Llama under "llama.", then a linear head of 3 labels."""
    sd = {f"{prefix}llama.{name}": t for name, t in random_state_dict(shared=True).items()}
    head = {"classifier_head.weight": torch.randn(3, 16), "classifier_head.bias": torch.randn(3)}
    return {**sd, **{prefix + name: tensor for name, tensor in head.items()}}


@pytest.mark.parametrize("prefix", ["", "_orig_mod."])
def test_finetuned_classifier(tmp_path, prefix):
    sd = finetuned_state_dict(prefix)
    torch.save({"model_args": ARGS, "model": sd, "optim": {"state": {}}, "args": {"lr": 1e-5}, "epoch": 2},
               tmp_path / "f.pt")
    model_args, _, llama, head = read_llama(tmp_path / "f.pt")
    assert model_args == ARGS
    assert_same_state(llama, random_state_dict(shared=True))
    assert_same_state(head, {name: sd[prefix + name] for name in ("classifier_head.weight", "classifier_head.bias")})
    assert_same_state(read_llama(tmp_path / "f.pt").state_dict, llama)


@pytest.mark.parametrize("change, error", [
    (lambda sd: sd.update({"pooler.weight": torch.zeros(16, 16)}), r"unexpected tensor\(s\) \['pooler\.weight'\]"),
    (lambda sd: sd.update({"llama.layers.0.attention.compute_query.lora_A": torch.zeros(2, 16)}),
     r"layers\.0\.attention\.compute_query\.lora_A"),
    (lambda sd: sd.pop("classifier_head.bias"), r"without \['classifier_head\.bias'\]"),
    (lambda sd: sd.update({"classifier_head.weight": torch.zeros(3, 15)}), r"classifier head of shapes \(3, 15\)"),
    (lambda sd: sd.pop("llama.layers.1.ffn_norm.weight"), r"layers\.1\.ffn_norm\.weight.*missing"),
])
def test_finetuned_classifier_is_read_strictly(tmp_path, change, error):
    sd = finetuned_state_dict()
    change(sd)
    torch.save({"model_args": ARGS, "model": sd}, tmp_path / "f.pt")
    with pytest.raises(InputError, match=rf"f\.pt.*{error}"):
        read_llama(tmp_path / "f.pt")


def test_bin_has_no_classifier(asset):
    assert read_llama(asset("stories260K.bin")).head == {}


def classifier_checkpoint(last: bool) -> dict:
    """A best (or last) checkpoint of run_llama.py --option finetune, laid out as checkpoint.py's docstring says."""
    saved = {"model_args": ARGS, "model": finetuned_state_dict(), "optim": {"state": {}, "param_groups": []},
             "model_config": asdict(ClassifierConfig("base.pt", num_labels=3)), "label_names": ["a", "b", "c"],
             "args": {"lr": 1e-5}, "epoch": 1, "best_dev_acc": 0.5}
    if last:
        saved |= {"rng": [{"torch": torch.get_rng_state()}], "run": "2024-01-01T00:00:00", "metrics": [],
                  "inputs_sha256": {"train": "0" * 64}}
    return saved


@pytest.mark.parametrize("last", [False, True])
def test_classifier_checkpoint_round_trip(tmp_path, last):
    saved = classifier_checkpoint(last)
    save_classifier_checkpoint(tmp_path / "c.pt", saved, last=last)
    read = read_classifier_checkpoint(tmp_path / "c.pt", last=last)
    assert read.keys() == saved.keys() and read["label_names"] == ["a", "b", "c"]
    assert_same_state(read["model"], saved["model"])
    assert_same_state(read_llama(tmp_path / "c.pt").state_dict, random_state_dict(shared=True))  # its Llama, as a Llama
    if not last:  # a best checkpoint is not one that --resume can go on from
        with pytest.raises(InputError, match=r"c\.pt: not a last checkpoint of run_llama\.py.*lacks "
                                             r"\['inputs_sha256', 'metrics'"):
            read_classifier_checkpoint(tmp_path / "c.pt", last=True)


def test_classifier_checkpoint_that_could_not_be_read_back_is_not_written(tmp_path):
    saved = classifier_checkpoint(last=False)
    saved["epoch"] = 1.0
    with pytest.raises(InputError, match=r"writing .*c\.pt: 'epoch' is a float, not a int"):
        save_classifier_checkpoint(tmp_path / "c.pt", saved)
    with pytest.raises(InputError, match=r"writing .*c\.pt: not a last checkpoint.*lacks "
                                         r"\['inputs_sha256', 'metrics', 'rng'"):
        save_classifier_checkpoint(tmp_path / "c.pt", classifier_checkpoint(last=False), last=True)
    assert list(tmp_path.iterdir()) == []


def test_lora_checkpoint_is_not_read_as_a_llama(tmp_path):
    torch.save({"model_args": ARGS, "lora": {}}, tmp_path / "lora.pt")
    with pytest.raises(LoraCheckpointError, match=r"lora\.pt: a LoRA classifier of run_llama\.py"):
        read_llama(tmp_path / "lora.pt")


def flip_byte_of_largest_entry(path) -> None:
    """Invert one byte inside the data of the largest entry of the zip `path`, leaving the archive whole."""
    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    data[entry.header_offset + 30 + len(entry.filename) + len(entry.extra) + entry.file_size // 2] ^= 0x01
    path.write_bytes(data)


def test_corrupted_byte_inside_a_pt_is_caught_by_its_crc(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, ARGS, random_state_dict(shared=False))
    flip_byte_of_largest_entry(path)
    with pytest.raises(InputError, match=r"c\.pt: corrupt: the bytes of '.*' do not match their CRC-32"):
        read_llama(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value):
    sd = random_state_dict(shared=True)
    sd["layers.1.attention.compute_key.weight"][2, 3] = value
    save_checkpoint(tmp_path / "c.pt", ARGS, sd)
    with pytest.raises(InputError, match=r"c\.pt: tensor 'model/layers\.1\.attention\.compute_key\.weight' "
                                              r"holds [01] NaN and [01] infinite value\(s\) out of 128"):
        read_llama(tmp_path / "c.pt")
    write_llama2c_bin(tmp_path / "m.bin", ARGS, sd)
    with pytest.raises(InputError, match=r"m\.bin: tensor 'layers\.1\.attention\.compute_key\.weight' holds"):
        read_llama(tmp_path / "m.bin")


def test_legacy_torch_save_is_named_as_such(tmp_path):
    torch.save({"model_args": ARGS, "model": random_state_dict(True)}, tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    with pytest.raises(InputError, match=r"old\.pt: legacy torch\.save format"):
        read_llama(tmp_path / "old.pt")


def test_empty_file_and_folder(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.pt: empty file"):
        read_llama(tmp_path / "empty.pt")
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(InputError, match=r"dir\.pt is a folder, not a checkpoint file"):
        read_llama(tmp_path / "dir.pt")


@pytest.mark.parametrize("change, error", [
    (dict(n_layers=2.0), r"n_layers=2\.0 is not a finite int"),
    (dict(dim=True), r"dim=True is not a finite int"),
    (dict(layer_norm_eps=float("nan")), r"layer_norm_eps=nan is not a finite float"),
    (dict(hidden_dim="40"), r"hidden_dim='40' is not a finite int \| None"),
    (dict(n_layers=10**9), r"n_layers=1000000000, but the file holds only 21 tensors"),
])
def test_model_args_of_the_wrong_type_are_refused(tmp_path, change, error):
    torch.save({"model_args": {**ARGS, **change}, "model": random_state_dict(True)}, tmp_path / "c.pt")
    with pytest.raises(InputError, match=rf"c\.pt: .*{error}"):
        read_llama(tmp_path / "c.pt")


@pytest.mark.parametrize("ckpt, error", [
    ({"model_args": [16, 40], "model": {}}, r"model_args is a list, not a dict"),
    ({"model_args": ARGS, "model": [torch.zeros(2)]}, r"'model': a list, not a dict of tensors"),
    ({"model_args": ARGS, "model": {"norm.weight": 1.0}}, r"entry 'norm\.weight' is a float, not a named tensor"),
    ({"model_args": ARGS, "model": {"norm.weight": torch.zeros(16, dtype=torch.long)}},
     r"tensor 'norm\.weight' holds torch\.int64, not floating-point weights"),
    pytest.param({"model_args": ARGS, "model": {"norm.weight": torch.zeros(16).to_sparse()}},
                 r"tensor 'model/norm\.weight' is stored as torch\.sparse_coo, not as a dense tensor",
                 marks=pytest.mark.filterwarnings("error"), id="sparse"),  # refused in one line, with no warning
])
def test_checkpoint_contents_of_the_wrong_kind_are_refused(tmp_path, ckpt, error):
    torch.save(ckpt, tmp_path / "c.pt")
    with pytest.raises(InputError, match=rf"c\.pt.*{error}"):
        read_llama(tmp_path / "c.pt")


def test_bin_header_with_huge_sizes_is_refused_at_once(tmp_path):
    header = struct.pack("<7i", 16, 40, 2**30, 4, 2, 37, 8)  # n_layers 2^30: listing its tensors would take hours
    (tmp_path / "m.bin").write_bytes(header + bytes(400))
    with pytest.raises(InputError, match=r"m\.bin: wrong size .* found 428"):
        read_llama(tmp_path / "m.bin")


def test_weights_digest_is_that_of_the_weights_not_of_the_file(tmp_path):
    sd = random_state_dict(shared=False)
    save_checkpoint(tmp_path / "c.pt", ARGS, sd)
    write_llama2c_bin(tmp_path / "m.bin", ARGS, sd)
    digests = {weights_digest(read_llama(tmp_path / name).state_dict) for name in ("c.pt", "m.bin")}
    assert len(digests) == 1
    sd["norm.weight"][0] += 1e-3
    assert weights_digest(sd) not in digests


def test_a_checkpoint_is_opened_and_read_once(tmp_path, monkeypatch):
    """One read gives the sniffed format, the CRC-32 checks and the unpickled tensors (it took three opens)."""
    save_checkpoint(tmp_path / "c.pt", ARGS, random_state_dict(shared=True))
    write_llama2c_bin(tmp_path / "m.bin", ARGS, random_state_dict(shared=True))
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, *args, **kwargs: opened.append(file) or real_open(file, *args,
                                                                                                          **kwargs))
    for name in ("c.pt", "m.bin"):
        read_llama(tmp_path / name)
    assert [Path(file).name for file in opened] == ["c.pt", "m.bin"]


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail with TimeoutError what takes longer than `seconds` (a walk over 2⁶⁴ paths would never end)."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def shared_pairs(levels: int) -> list:
    """x = [x, x], `levels` times over, from a tensor: `levels` + 1 objects, 2^levels paths to the tensor."""
    x = [torch.zeros(2)]
    for _ in range(levels):
        x = [x, x]
    return x


def with_pickle(path: Path, pickle: bytes) -> None:
    """A torch.save zip at `path` whose data.pkl is `pickle` (written out, as torch.save would overflow C's stack)."""
    torch.save({}, path)
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, pickle if name.endswith("/data.pkl") else data)


def test_objects_referred_to_many_times_are_walked_once(tmp_path):
    torch.save({"model_args": ARGS, "model": random_state_dict(True), "extra": shared_pairs(64)}, tmp_path / "c.pt")
    with deadline(20):
        assert_same_state(read_llama(tmp_path / "c.pt").state_dict, random_state_dict(True))
    torch.save({"model_args": ARGS, "model": random_state_dict(True), "x": shared_pairs(64)}, tmp_path / "nan.pt")
    saved = torch.load(tmp_path / "nan.pt", weights_only=True)
    saved["x"][0][1][0][0][0] = torch.tensor([0.0, float("nan")])  # the tensor under every path, named by the first
    torch.save(saved, tmp_path / "nan.pt")
    with deadline(20), pytest.raises(InputError, match=r"nan\.pt: tensor 'x/0/0/0/0/0' holds 1 NaN"):
        read_llama(tmp_path / "nan.pt")


@pytest.mark.parametrize("depth", [3000, 1_000_000])
def test_deeply_nested_objects_are_refused_in_one_line(tmp_path, depth):
    nested = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."  # a list in a list, `depth` deep
    with_pickle(tmp_path / "c.pt", nested)
    with pytest.raises(InputError, match=r"c\.pt: not a checkpoint: its objects nest more than 100 deep \(under '0'\)"):
        read_llama(tmp_path / "c.pt")


def test_too_many_objects_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_OBJECTS", 100)
    torch.save({"model_args": ARGS, "model": random_state_dict(True), "x": list(range(80))}, tmp_path / "c.pt")
    with pytest.raises(InputError, match=r"c\.pt: not a checkpoint: it holds more than 100 objects"):
        read_llama(tmp_path / "c.pt")


@pytest.mark.parametrize("tensor, error", [
    (torch.empty(16, device="meta"), r"tensor 'model/norm\.weight' \(torch\.float32\) is on the meta device"),
    (torch.zeros(16, dtype=torch.float8_e4m3fn), r"tensor 'model/norm\.weight' holds torch\.float8_e4m3fn \(on cpu\)"),
    (torch.zeros(16, dtype=torch.float8_e5m2), r"tensor 'model/norm\.weight' holds torch\.float8_e5m2 \(on cpu\)"),
    (torch.zeros(16, dtype=torch.complex64), r"tensor 'model/norm\.weight' holds torch\.complex64"),
])
def test_tensors_without_values_or_of_other_dtypes_are_refused(tmp_path, tensor, error):
    torch.save({"model_args": ARGS, "model": {**random_state_dict(True), "norm.weight": tensor}}, tmp_path / "c.pt")
    with pytest.raises(InputError, match=rf"c\.pt: {error}"):
        read_llama(tmp_path / "c.pt")
    saved = classifier_checkpoint(last=True)
    saved["optim"]["state"] = {0: {"step": torch.tensor(1.0), "exp_avg": tensor}}
    torch.save(saved, tmp_path / "last.pt")
    in_optimizer = error.replace(r"model/norm\.weight", "optim/state/0/exp_avg")
    with pytest.raises(InputError, match=rf"last\.pt: {in_optimizer}"):
        read_classifier_checkpoint(tmp_path / "last.pt", last=True)


NAN = float("nan")


@pytest.mark.parametrize("change, error", [
    (dict(epoch=-5), r"'epoch' is -5, not an epoch \(an int from 0\)"),
    (dict(epoch=True), r"'epoch' is True, not an epoch"),
    (dict(best_dev_acc=NAN), r"'best_dev_acc' is nan, not an accuracy \(a float in \[0, 1\]\)"),
    (dict(best_dev_acc=1.5), r"'best_dev_acc' is 1\.5, not an accuracy"),
    (dict(metrics=["junk"]), r"'metrics' item 0 is 'junk', not a metrics record"),
    (dict(metrics=[{"epoch": 0, "loss": 0.5, "train_acc": 0.5, "dev_acc": 0.5},
                   {"epoch": 1, "loss": NAN, "train_acc": 0.5, "dev_acc": 0.5}]), r"'metrics' item 1 is \{.*not a"),
    (dict(metrics=[{"epoch": "0", "loss": 0.5, "train_acc": 0.5, "dev_acc": 0.5}]), r"'metrics' item 0 is"),
    (dict(inputs_sha256={"train": "abc"}), r"'inputs_sha256' item 'train' is 'abc', not an input's sha256"),
    (dict(label_names=["a", 2, "c"]), r"'label_names' item 1 is 2, not a label name"),
    (dict(args={"lr": shared_pairs(64)}), r"'args' item 'lr' is \[\[\[\[\.\.\.\], \[\.\.\.\]\], .*\]\], not a flag"),
    (dict(model_args={**ARGS, "layer_norm_eps": 1e308}), r"'model_args': bad model sizes: .*layer_norm_eps"),
    (dict(model_args={**ARGS, "causal": True}), r"'model_config' causal=False, but 'model_args' say causal=True"),
    (dict(label_names=["a", "b"]), r"'model_config' num_labels=3, but it has 2 labels"),
    (dict(model_config=asdict(ClassifierConfig("base.pt", num_labels=4))),
     r"'model_config' num_labels=4, but it has 3 labels"),
    (dict(model_config=asdict(ClassifierConfig("base.pt", 3, option="lora"))),
     r"'model_config' option='lora', but its weights are finetune's"),
    (dict(model_config=asdict(ClassifierConfig("base.pt", 3, hidden_dropout_prob=1.5))),
     r"'model_config' hidden_dropout_prob=1\.5"),
    (dict(model_config={**asdict(ClassifierConfig("base.pt", 3)), "num_labels": shared_pairs(64)}),
     r"'model_config' num_labels=\[\[\[\[\.\.\.\], .*\]\] is not a finite int"),
])
def test_plain_fields_of_a_classifier_checkpoint_are_checked(tmp_path, change, error):
    saved = classifier_checkpoint(last=True) | change
    torch.save(saved, tmp_path / "last.pt")
    with deadline(20), pytest.raises(InputError, match=rf"last\.pt: {error}"):
        read_classifier_checkpoint(tmp_path / "last.pt", last=True)
    with deadline(20), pytest.raises(InputError, match=rf"writing .*c\.pt: {error}"):
        save_classifier_checkpoint(tmp_path / "c.pt", saved, last=True)


def test_absurd_norm_eps_is_refused(tmp_path):
    for eps in (1e308, 0.5, 1e-300):
        save_checkpoint(tmp_path / "c.pt", ARGS, random_state_dict(True))
        saved = torch.load(tmp_path / "c.pt", weights_only=True)
        saved["model_args"]["layer_norm_eps"] = eps
        torch.save(saved, tmp_path / "c.pt")
        with pytest.raises(InputError, match=rf"c\.pt: bad model sizes: LlamaConfig\.layer_norm_eps must be in "
                                             rf"\[1\.18e-38, 0\.1\] \(NORM_EPS_RANGE\), got {re.escape(str(eps))}"):
            read_llama(tmp_path / "c.pt")
    for eps in (1e-5, 1e-6, 0.1):
        save_checkpoint(tmp_path / "c.pt", dict(ARGS, layer_norm_eps=eps), random_state_dict(True))
        assert read_llama(tmp_path / "c.pt").config.layer_norm_eps == eps


def test_a_causal_checkpoint_is_not_read_in_the_course_semantics(tmp_path):
    save_checkpoint(tmp_path / "causal.pt", dict(ARGS, causal=True), random_state_dict(True))
    with pytest.raises(InputError, match=r"causal\.pt was saved as a causal model \(model_args causal=True\): "
                                         r"pass --causal"):
        read_llama(tmp_path / "causal.pt", causal=False)
    assert read_llama(tmp_path / "causal.pt", causal=True).config.causal
    assert read_llama(tmp_path / "causal.pt").config.causal  # what it says, where nothing is asked
    save_checkpoint(tmp_path / "course.pt", dict(ARGS, causal=False), random_state_dict(True))
    assert read_llama(tmp_path / "course.pt", causal=True).config.causal  # Llama 2's mask on any model
    assert not read_llama(tmp_path / "course.pt", causal=False).config.causal
