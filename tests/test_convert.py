"""Tests for convert.py: exports that transformers and load_pretrained read back with the same logits."""
import json
import os
import re
import resource
import stat
import struct
import subprocess
import sys
from argparse import Namespace
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import LlamaForCausalLM

import checkpoint
import convert
from checkpoint import save_checkpoint
from classifier import LlamaEmbeddingClassifier
from config import ClassifierConfig, LlamaConfig
from files import InputError
from llama import Llama, load_pretrained
from test_llama import random_model
from trainer import checkpoint_data

REPO = Path(__file__).resolve().parent.parent
CONFIG = LlamaConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16, layer_norm_eps=1e-6,
                     causal=True)  # transformers computes the causal model
LLAMA2C_CONFIG = replace(CONFIG, layer_norm_eps=1e-5)  # llama2.c's .bin holds no eps: it is always 1e-5
TOKENS = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(0))


def all_logits(model: Llama, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens, targets=tokens)[0]


def hf_logits(out_dir: Path, tokens: torch.Tensor = TOKENS) -> torch.Tensor:
    hf = LlamaForCausalLM.from_pretrained(out_dir).eval()
    assert hf.dtype == torch.float32
    with torch.no_grad():
        return hf(tokens).logits


def test_half_split_rows():
    """Within each head the even rows come first, then the odd ones."""
    weight = torch.arange(8.0)[:, None].expand(8, 3)
    assert checkpoint.half_split_rows(weight, n_heads=2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("tied", [True, False])
def test_hf_export(tmp_path, capsys, tied):
    model = random_model(CONFIG, tied=tied)
    save_checkpoint(tmp_path / "model.pt", asdict(CONFIG), model.state_dict())
    out = tmp_path / "hf"
    assert convert.main([str(tmp_path / "model.pt"), "--to", "hf", str(out)]) == 0
    assert "note" not in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "model.pt"]  # no temporary folder left
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] == tied
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (32, 96, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (4, 2, 8)
    assert (config["vocab_size"], config["max_position_embeddings"], config["rms_norm_eps"]) == (61, 16, 1e-6)
    assert config.get("rope_theta", config.get("rope_parameters", {}).get("rope_theta")) == 10000.0
    assert not config["attention_bias"] and not config["mlp_bias"] and config["hidden_act"] == "silu"
    assert ("lm_head.weight" in safetensors.torch.load_file(out / "model.safetensors")) == (not tied)
    assert (hf_logits(out) - all_logits(model)).abs().max() < 1e-4


def test_hf_export_of_stories260k(tmp_path, asset):
    stories260k = str(asset("stories260K.bin"))
    out = tmp_path / "hf"
    assert convert.main([stories260k, "--to", "hf", str(out)]) == 0
    model = load_pretrained(stories260k, causal=True)
    tokens = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(1))
    assert (hf_logits(out, tokens) - all_logits(model, tokens)).abs().max() < 1e-4


def test_hf_export_replaces_its_files_only(tmp_path):
    save_checkpoint(tmp_path / "model.pt", asdict(CONFIG), random_model(CONFIG).state_dict())
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "README.md").write_text("mine")
    assert convert.main([str(tmp_path / "model.pt"), "--to", "hf", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 32
    assert (out / "README.md").read_text() == "mine"


def test_hf_export_failure_leaves_nothing(tmp_path, capsys):
    """A full disk (here the file size limit, ulimit -f) is one line saying "no space"; nothing is left."""
    save_checkpoint(tmp_path / "model.pt", asdict(CONFIG), random_model(CONFIG).state_dict())
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
    result = subprocess.run([sys.executable, str(REPO / "convert.py"), "model.pt", "--to", "hf", "hf"], cwd=tmp_path,
                            capture_output=True, text=True, preexec_fn=limit)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: cannot write hf: no space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    (tmp_path / "a-file").write_text("")
    assert convert.main([str(tmp_path / "model.pt"), "--to", "hf", str(tmp_path / "a-file")]) == 1
    assert "a-file: it is a file (--to hf writes a folder)" in capsys.readouterr().err


@pytest.mark.parametrize("tied", [True, False])
def test_llama2c_export(tmp_path, tied):
    model = random_model(LLAMA2C_CONFIG, tied=tied)
    save_checkpoint(tmp_path / "model.pt", asdict(model.config), model.state_dict())
    assert convert.main([str(tmp_path / "model.pt"), "--to", "llama2c", str(tmp_path / "model.bin")]) == 0
    assert (tmp_path / "model.bin").read_bytes()[:8] == struct.pack("<Ii", 0x616B3432, 1)  # llama2.c version 1
    assert torch.equal(all_logits(load_pretrained(str(tmp_path / "model.bin"), causal=True)), all_logits(model))


def test_llama2c_export_of_stories260k(tmp_path, asset):
    stories260k = str(asset("stories260K.bin"))
    assert convert.main([stories260k, "--to", "llama2c", str(tmp_path / "v1.bin")]) == 0
    original = load_pretrained(stories260k, causal=True)
    exported = load_pretrained(str(tmp_path / "v1.bin"), causal=True)
    tokens = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(1))
    assert torch.equal(all_logits(exported, tokens), all_logits(original, tokens))


def test_missing_input_is_fetched_by_the_command(tmp_path, asset, asset_cache, monkeypatch):
    """convert.main fetches a missing known checkpoint before reading it (load_pretrained itself fetches nothing)."""
    stories260k = asset("stories260K.bin")  # into asset_cache, the mirror here
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINLLAMA_ASSET_MIRROR", str(asset_cache))
    assert convert.main(["stories260K.bin", "--to", "llama2c", "v1.bin"]) == 0
    assert (tmp_path / "stories260K.bin").read_bytes() == stories260k.read_bytes()
    assert (tmp_path / "v1.bin").is_file()


def test_llama2c_export_refuses_other_eps(tmp_path, capsys):
    save_checkpoint(tmp_path / "model.pt", asdict(CONFIG), random_model(CONFIG).state_dict())  # layer_norm_eps 1e-6
    assert convert.main([str(tmp_path / "model.pt"), "--to", "llama2c", str(tmp_path / "model.bin")]) == 1
    assert "layer_norm_eps=1e-06" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def save_finetuned(path: Path, model: Llama, n_labels: int = 5) -> None:
    """A checkpoint laid out as run_llama.py saves its fine-tuned LlamaEmbeddingClassifier."""
    state_dict = {"llama." + name: tensor for name, tensor in model.state_dict().items()}
    state_dict["classifier_head.weight"] = torch.randn(n_labels, model.config.dim)
    state_dict["classifier_head.bias"] = torch.randn(n_labels)
    torch.save({"model_args": asdict(model.config), "model": state_dict, "optim": {"state": {}, "param_groups": []},
                "args": {"lr": 1e-5, "option": "finetune"}, "epoch": 3}, path)


@pytest.mark.parametrize("to, out", [("hf", "hf"), ("llama2c", "model.bin")])
def test_finetuned_classifier_exports_its_llama(tmp_path, capsys, to, out):
    model = random_model(LLAMA2C_CONFIG)
    save_finetuned(tmp_path / "finetune.pt", model)
    assert convert.main([str(tmp_path / "finetune.pt"), "--to", to, str(tmp_path / out)]) == 0
    printed = capsys.readouterr().out
    assert "classifier head (classifier_head.weight (5, 32), classifier_head.bias (5,)) was not" in printed
    if to == "hf":
        assert (hf_logits(tmp_path / out) - all_logits(model)).abs().max() < 1e-4
    else:
        assert torch.equal(all_logits(load_pretrained(str(tmp_path / out), causal=True)), all_logits(model))


def test_finetuned_classifier_with_unknown_tensors_is_refused(tmp_path, capsys):
    model = random_model(CONFIG)
    save_finetuned(tmp_path / "finetune.pt", model)
    ckpt = torch.load(tmp_path / "finetune.pt", weights_only=True)
    ckpt["model"]["llama.layers.0.attention.compute_query.lora_A"] = torch.zeros(4, 32)
    torch.save(ckpt, tmp_path / "lora.pt")
    assert convert.main([str(tmp_path / "lora.pt"), "--to", "hf", str(tmp_path / "hf")]) == 1
    assert "layers.0.attention.compute_query.lora_A" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


def test_lora_classifier_exports_its_merged_llama(tmp_path, capsys):
    """A LoRA checkpoint holds adapters only: the export is the base model with the adapters merged in."""
    base = random_model(LLAMA2C_CONFIG)
    save_checkpoint(tmp_path / "base.pt", asdict(base.config), base.state_dict())
    config = ClassifierConfig(str(tmp_path / "base.pt"), num_labels=3, option="lora", lora_rank=2, lora_alpha=4.0,
                              causal=True)
    model = LlamaEmbeddingClassifier(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 0.1)  # trained adapters: B is no longer zero
    expected = all_logits(model.llama)
    assert (expected - all_logits(base)).abs().max() > 1e-3  # the adapters change the model
    torch.save(checkpoint_data(model, {}, config, ["a", "b", "c"], 0, 0.5), tmp_path / "lora.pt")
    assert convert.main([str(tmp_path / "lora.pt"), "--to", "llama2c", str(tmp_path / "merged.bin")]) == 0
    out = capsys.readouterr().out
    assert "classifier head (classifier_head.weight (3, 32), classifier_head.bias (3,)) was not" in out
    assert (all_logits(load_pretrained(str(tmp_path / "merged.bin"), causal=True)) - expected).abs().max() < 1e-5
    with pytest.raises(InputError, match="holds only its adapters"):
        load_pretrained(str(tmp_path / "lora.pt"), causal=True)


def test_without_transformers(tmp_path):
    """--to llama2c needs neither transformers nor safetensors; --to hf says how to install them."""
    model = random_model(LLAMA2C_CONFIG)
    save_checkpoint(tmp_path / "model.pt", asdict(model.config), model.state_dict())
    blocked = "import sys; sys.modules['transformers'] = sys.modules['safetensors'] = None; import runpy; " \
              "sys.argv = ['convert.py'] + sys.argv[1:]; runpy.run_path('convert.py', run_name='__main__')"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", blocked, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))

    result = run(str(tmp_path / "model.pt"), "--to", "llama2c", str(tmp_path / "model.bin"))
    assert result.returncode == 0, result.stderr
    assert torch.equal(all_logits(load_pretrained(str(tmp_path / "model.bin"), causal=True)), all_logits(model))
    result = run(str(tmp_path / "model.pt"), "--to", "hf", str(tmp_path / "hf"))
    assert result.returncode == 1
    assert "needs the transformers package: pip install transformers safetensors" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "hf").exists()


def test_output_that_is_an_input_is_refused(tmp_path, capsys):
    model = random_model(LLAMA2C_CONFIG)
    save_finetuned(tmp_path / "ft.pt", model)
    (tmp_path / "link.bin").symlink_to(tmp_path / "ft.pt")
    before = (tmp_path / "ft.pt").read_bytes()
    for out in ("ft.pt", "link.bin"):
        assert convert.main([str(tmp_path / "ft.pt"), "--to", "llama2c", str(tmp_path / out)]) == 1
        assert f"{tmp_path / out} is the input {tmp_path / 'ft.pt'}: the export would replace it" in \
            capsys.readouterr().err
    assert (tmp_path / "ft.pt").read_bytes() == before


def test_lora_base_that_is_the_output_or_missing_is_refused(tmp_path, capsys):
    base = random_model(LLAMA2C_CONFIG)
    save_checkpoint(tmp_path / "base.pt", asdict(base.config), base.state_dict())
    # causal, as the base was saved
    config = ClassifierConfig(str(tmp_path / "base.pt"), num_labels=3, option="lora", causal=True)
    torch.save(checkpoint_data(LlamaEmbeddingClassifier(config), {}, config, ["a", "b", "c"], 0, 0.5),
               tmp_path / "lora.pt")
    before = (tmp_path / "base.pt").read_bytes()
    assert convert.main([str(tmp_path / "lora.pt"), "--to", "llama2c", str(tmp_path / "base.pt")]) == 1
    assert "base.pt is the input" in capsys.readouterr().err
    assert (tmp_path / "base.pt").read_bytes() == before
    (tmp_path / "base.pt").unlink()
    assert convert.main([str(tmp_path / "lora.pt"), "--to", "llama2c", str(tmp_path / "out.bin")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'lora.pt'}: a LoRA checkpoint, whose base model "
                                              f"cannot be loaded: checkpoint not found: {tmp_path / 'base.pt'}")


@pytest.mark.parametrize("to", ["hf", "llama2c"])
def test_output_in_a_missing_folder_is_refused_before_any_work(tmp_path, capsys, to):
    save_checkpoint(tmp_path / "model.pt", asdict(LLAMA2C_CONFIG), random_model(LLAMA2C_CONFIG).state_dict())
    out = tmp_path / "missing" / "out"
    assert convert.main([str(tmp_path / "model.pt"), "--to", to, str(out)]) == 1
    assert capsys.readouterr().err == f"error: cannot write {out}: the folder {out.parent} does not exist\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_corrupt_or_unsafe_checkpoint_is_one_clear_error(tmp_path, capsys):
    save_checkpoint(tmp_path / "model.pt", asdict(LLAMA2C_CONFIG), random_model(LLAMA2C_CONFIG).state_dict())
    (tmp_path / "cut.pt").write_bytes((tmp_path / "model.pt").read_bytes()[:3000])
    torch.save({"model_args": {}, "model": {}, "code": Namespace(x=1)}, tmp_path / "unsafe.pt")
    for name, what in (("cut.pt", "corrupt: a damaged or truncated zip archive"),
                       ("unsafe.pt", "unsafe: its pickle holds objects other than tensors")):
        assert convert.main([str(tmp_path / name), "--to", "llama2c", str(tmp_path / "out.bin")]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / name}: {what}") and err.count("\n") == 1
    assert not (tmp_path / "out.bin").exists()


def node(folder: Path) -> dict[str, tuple[str, str]]:
    """Each entry under `folder` (links not followed): its kind and, for a file or link, its bytes or target."""
    def content(p: Path) -> str:
        if p.is_symlink():
            return os.readlink(p)
        return p.read_bytes().hex() if stat.S_ISREG(p.lstat().st_mode) else ""
    return {str(p.relative_to(folder)): (stat.filemode(p.lstat().st_mode)[0], content(p)) for p in folder.rglob("*")}


def immutable(path: Path) -> None:
    """A file that no one may replace (chattr +i; the test removes the flag)."""
    path.write_text("mine")
    subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)


OUTPUT_CASES = {  # name -> (--to, OUT, how to make what is there, a regular expression of the error)
    "FIFO": ("llama2c", "p", lambda f: os.mkfifo(f / "p"), r"cannot write p: it is a FIFO, which is neither"),
    "character device": ("llama2c", "null", lambda f: os.mknod(f / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3)),
                         r"cannot write null: it is a character device"),
    "FIFO named config.json in the hf folder": ("hf", "hf", lambda f: (f / "hf").mkdir() or os.mkfifo(
        f / "hf" / "config.json"), r"cannot write hf/config\.json: it is a FIFO"),
    "link to nothing": ("llama2c", "link.bin", lambda f: (f / "link.bin").symlink_to("gone/x.bin"),
                        r"cannot write link\.bin: it is a link to .*gone/x\.bin, which does not exist"),
    "link to a FIFO": ("llama2c", "link.bin", lambda f: os.mkfifo(f / "p") or (f / "link.bin").symlink_to("p"),
                       r"cannot write link\.bin: it is a FIFO"),
    "a file name ending in /": ("llama2c", "newdir/", lambda f: None,
                                r"cannot write newdir/: it ends in '/', which names a folder"),
    "hf folder that is a file": ("hf", "out/", lambda f: (f / "out").write_text("mine"),
                                 r"cannot write out/: it is a file \(--to hf writes a folder\)"),
    "immutable": ("llama2c", "kept.bin", lambda f: immutable(f / "kept.bin"),
                  r"cannot write kept\.bin: cannot replace it"),
}


@pytest.mark.parametrize("case", OUTPUT_CASES.values(), ids=OUTPUT_CASES.keys())
def test_an_output_that_is_not_a_regular_file_is_refused_and_left_as_it_was(tmp_path, case):
    to, out, make, message = case
    save_checkpoint(tmp_path / "model.pt", asdict(LLAMA2C_CONFIG), random_model(LLAMA2C_CONFIG).state_dict())
    try:
        make(tmp_path)
    except (PermissionError, subprocess.CalledProcessError, FileNotFoundError) as e:
        pytest.skip(f"cannot make it here: {e}")
    before = node(tmp_path)
    try:
        result = subprocess.run([sys.executable, str(REPO / "convert.py"), "model.pt", "--to", to, out], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "kept.bin")], capture_output=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.fullmatch(f"error: {message}.*\n", result.stderr), result.stderr
    assert node(tmp_path) == before


def test_an_output_link_is_written_through_and_stays_a_link(tmp_path):
    save_checkpoint(tmp_path / "model.pt", asdict(LLAMA2C_CONFIG), random_model(LLAMA2C_CONFIG).state_dict())
    (tmp_path / "target.bin").write_text("old")
    (tmp_path / "link.bin").symlink_to("target.bin")
    name = "n" * 244 + ".bin"  # a legal name whose temporary must still be legal
    for out in ("link.bin", name):
        assert convert.main([str(tmp_path / "model.pt"), "--to", "llama2c", str(tmp_path / out)]) == 0
    assert (tmp_path / "link.bin").is_symlink() and os.readlink(tmp_path / "link.bin") == "target.bin"
    assert (tmp_path / "target.bin").read_bytes() == (tmp_path / name).read_bytes() != b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pt", "target.bin", "link.bin", name])


@pytest.mark.parametrize("to", ["hf", "llama2c"])
def test_an_empty_output_path_is_refused_before_the_checkpoint_is_fetched(tmp_path, capsys, monkeypatch, to):
    """OUT from an unset variable ("$OUTDIR") is "": refused in one line, before stories42M.pt is fetched or read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINLLAMA_ASSET_MIRROR", str(tmp_path / "no-mirror"))  # a fetch would fail in many lines
    assert convert.main(["stories42M.pt", "--to", to, ""]) == 1
    what = "a folder" if to == "hf" else "a file"
    assert capsys.readouterr().err == (f"error: cannot write OUT: the path is empty (an unset shell variable?): "
                                       f"name {what}\n")
    assert list(tmp_path.iterdir()) == []


def test_stdout_on_a_full_device_is_one_line_after_a_whole_export(tmp_path):
    save_checkpoint(tmp_path / "model.pt", asdict(LLAMA2C_CONFIG), random_model(LLAMA2C_CONFIG).state_dict())
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, str(REPO / "convert.py"), "model.pt", "--to", "llama2c", "out.bin"],
                                cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "No space left on device" in result.stderr, result.stderr
    assert all_logits(load_pretrained(tmp_path / "out.bin")).shape == (2, 16, 61)  # the export itself is whole
