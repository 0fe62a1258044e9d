"""sanity_check.py's own errors; the check itself needs stories42M.pt, which the test machine may not have."""
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

import sanity_check
from checkpoint import save_checkpoint
from config import LlamaConfig
from llama import Llama, load_pretrained

REPO = Path(__file__).resolve().parent.parent


def test_model_with_a_smaller_vocabulary_is_one_clear_error(capsys, asset):
    model = str(asset("stories260K.bin"))  # 512 pieces; the check feeds ids up to 17953
    data = str(asset("sanity_check.data"))
    capsys.readouterr()  # a first fetch into the tests' cache prints its progress bar
    assert sanity_check.main(model, data) == 1
    err = capsys.readouterr().err
    assert err == f"error: {model}: not of stories42M's sizes (vocab_size=512, not 32000; dim=64, not 512; " \
                  "n_layers=5, not 8; n_kv_heads=4, not 8; hidden_dim=172, not 1376): " \
                  f"{data} holds stories42M.pt's outputs, so the check is made for that checkpoint only\n"


def test_a_model_of_other_sizes_is_not_blamed_on_the_implementation(capsys, asset, model_path: str):
    """The tests' tiny model has stories42M's vocabulary, so the check could run it, and would find other shapes."""
    data = str(asset("sanity_check.data"))
    capsys.readouterr()
    assert sanity_check.main(model_path, data) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {model_path}: not of stories42M's sizes (dim=32, not 512; n_layers=2, not 8; ")
    assert "implementation" not in err and err.count("\n") == 1


def test_pretrained_model_path_is_the_checkpoint_checked(tmp_path: Path, asset, model_path: str):
    shutil.copy(asset("sanity_check.data"), tmp_path)
    result = subprocess.run([sys.executable, str(REPO / "sanity_check.py"), "--pretrained-model-path", model_path],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.startswith(f"error: {model_path}: not of stories42M's sizes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sanity_check.data"]  # stories42M.pt was not fetched


def test_corrupt_expected_outputs_are_one_clear_error(tmp_path: Path, capsys, asset, model_path: str):
    data = tmp_path / "sanity_check.data"
    data.write_bytes(asset("sanity_check.data").read_bytes()[:10_000])
    assert sanity_check.main(model_path, str(data)) == 1
    assert capsys.readouterr().err.startswith(f"error: {data}: corrupt: a damaged or truncated zip archive")


def test_missing_files_are_fetched_by_the_check(tmp_path: Path, capsys, asset, asset_cache: Path, monkeypatch):
    """sanity_check.main fetches its two files before reading them (load_pretrained itself fetches nothing)."""
    asset("stories260K.bin"), asset("sanity_check.data")  # into asset_cache, the mirror here
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINLLAMA_ASSET_MIRROR", str(asset_cache))
    assert sanity_check.main("stories260K.bin", "sanity_check.data") == 1  # fetched, then refused: 512 pieces
    assert "vocab_size=512, not 32000" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sanity_check.data", "stories260K.bin"]


def test_other_weights_of_the_right_sizes_are_named_as_a_cause(tmp_path: Path, capsys, monkeypatch, model_path: str):
    """A checkpoint of stories42M's sizes with other weights cannot give sanity_check.data's outputs, whatever the
    implementation: the mismatch says so. Built tiny: the tests' model stands for stories42M (its sizes are the
    checked ones here, and its outputs the expected data), and another draw of its weights for the other checkpoint."""
    monkeypatch.setattr(sanity_check, "STORIES42M", LlamaConfig(**torch.load(model_path)["model_args"]))
    model = load_pretrained(model_path, causal=False)
    with torch.no_grad():
        logits, hidden_states = model(torch.tensor(sanity_check.SENT_IDS))
    data = tmp_path / "expected.data"
    torch.save({"logits": logits, "hidden_states": hidden_states}, data)
    assert sanity_check.main(model_path, str(data)) == 0
    assert capsys.readouterr().out == "Your Llama implementation is correct!\n"

    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_checkpoint(other, asdict(model.config), Llama(model.config).state_dict())
    assert sanity_check.main(str(other), str(data)) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"The outputs of {other} do not match {data}:" and lines[1].startswith("  logits: max ")
    assert lines[-1] == (f"{data} holds the outputs of the published stories42M.pt: if {other} is not that file "
                         "(other weights of its sizes), its weights alone make them differ; if it is, your Llama "
                         "implementation does not match the reference")
