"""--option lora end to end: only the adapters and the head train and are saved; the checkpoint loads onto the base
model, and merged into it for inference gives the predictions of the adapted model."""
import copy
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import run_llama
import trainer
from checkpoint import read_llama, save_checkpoint, weights_digest
from classifier import LlamaEmbeddingClassifier, load_weights
from config import ATTENTION_PROJECTIONS, ClassifierConfig, LlamaConfig
from llama import Llama, load_pretrained
from lora import LoRALinear, load_lora_state_dict, merge_lora
from run_llama import InputError
from test_run_llama import GetAsset, copy_head, course_batches, files, read_predictions
from tokenizer import Tokenizer
from trainer import checkpoint_data


def sst(asset: GetAsset, cwd: Path) -> dict[str, list[str]]:
    """The first lines of SST's files under cwd/data; returns the dev and test lines."""
    copy_head(asset, cwd, "sst-train.txt", 12)
    copy_head(asset, cwd, "sst-label-mapping.json", 1)
    return {"dev": copy_head(asset, cwd, "sst-dev.txt", 6), "test": copy_head(asset, cwd, "sst-test.txt", 4)}


def test_lora_run_saves_adapters_and_head_whose_merged_predictions_are_written(
        tmp_path: Path, monkeypatch, capsys, asset: GetAsset, model_path: str, tokenizer_model: str):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the picture is optional: a note, not a crash
    lines = sst(asset, tmp_path)
    before = files(tmp_path)
    run_llama.main(["--option", "lora", "--train", "data/sst-train.txt", "--epochs", "2", "--lr", "0.01",
                    "--batch_size", "4", "--lora_rank", "2", "--lora_alpha", "4", "--lora_dropout", "0.1",
                    "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model])
    assert "note: matplotlib is not installed, so lora-2-0.01.png was not drawn" in capsys.readouterr().out
    assert files(tmp_path) == before | {"lora-2-0.01.pt", "lora-2-0.01-last.pt", "metrics.jsonl",
                                        "sst-dev-lora-output.txt", "sst-test-lora-output.txt"}

    best = torch.load(tmp_path / "lora-2-0.01.pt", weights_only=True)
    assert best.keys() == {"model_args", "lora", "base_digest", "model_config", "label_names", "args", "epoch",
                           "best_dev_acc"}
    assert best["base_digest"] == weights_digest(read_llama(model_path).state_dict)
    adapters = {f"llama.layers.{i}.attention.{target}.lora_{m}"
                for i in range(2) for target in ("compute_query", "compute_value") for m in "AB"}
    assert best["lora"].keys() == adapters | {"classifier_head.weight", "classifier_head.bias"}
    assert (tmp_path / "lora-2-0.01.pt").stat().st_size < Path(model_path).stat().st_size / 50
    assert best["model_config"] == asdict(ClassifierConfig(model_path, 5, 0.3, "lora", 2, 4.0, 0.1))
    assert best["model_args"] == torch.load(model_path, weights_only=True)["model_args"]
    # the optimizer held the adapters and the head only, and the adapters moved off their start (B = 0)
    last = torch.load(tmp_path / "lora-2-0.01-last.pt", weights_only=True)
    assert len(last["optim"]["state"]) == len(best["lora"])
    assert all(last["lora"][name].abs().sum() > 0 for name in adapters if name.endswith("lora_B"))

    # reloaded onto the base model: the adapted model predicts what was written, which the merged model predicted
    model = LlamaEmbeddingClassifier(ClassifierConfig(**best["model_config"]))
    load_lora_state_dict(model, best["lora"], "classifier_head.")
    model.eval()
    merged = merge_lora(copy.deepcopy(model))
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    for name in ("dev", "test"):
        preds, sentences = read_predictions(tmp_path / f"sst-{name}-lora-output.txt", 5)
        ids = [tokenizer.encode(sentence, bos=True, eos=False) for sentence in sentences]
        with torch.no_grad():  # without a mask the padding is part of the input: the course's batches of 4
            adapted, plain = (torch.cat([m(torch.tensor(batch)) for batch in course_batches(ids, 4, tokenizer.pad_id)])
                              for m in (model, merged))
        torch.testing.assert_close(plain, adapted, atol=1e-5, rtol=1e-5)
        assert adapted.argmax(-1).tolist() == plain.argmax(-1).tolist() == preds
        assert len(preds) == len(lines[name])


def test_lora_all_projections_adapts_all_four(tmp_path: Path, monkeypatch, asset: GetAsset, model_path: str,
                                              tokenizer_model: str):
    monkeypatch.chdir(tmp_path)
    sst(asset, tmp_path)
    built = []  # (config, model) of each classifier the run builds: the trained one, then the reloaded best

    def build_classifier(config: ClassifierConfig) -> LlamaEmbeddingClassifier:
        built.append((config, LlamaEmbeddingClassifier(config)))
        return built[-1][1]

    monkeypatch.setattr(trainer, "build_classifier", build_classifier)
    run_llama.main(["--option", "lora", "--lora_all_projections", "--train", "data/sst-train.txt", "--epochs", "1",
                    "--batch_size", "4", "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model])
    config, model = built[0]
    assert config.lora_targets == ATTENTION_PROJECTIONS
    attention = model.llama.layers[0].attention
    assert all(isinstance(getattr(attention, name), LoRALinear) for name in ATTENTION_PROJECTIONS)


def test_lora_rank_beyond_the_model_is_refused(tmp_path: Path, monkeypatch, asset: GetAsset, model_path: str,
                                               tokenizer_model: str):
    monkeypatch.chdir(tmp_path)
    sst(asset, tmp_path)
    with pytest.raises(InputError, match=r"LoRA rank must be .* \[1, 32\], got 64"):
        run_llama.main(["--option", "lora", "--train", "data/sst-train.txt", "--lora_rank", "64",
                        "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model])


def test_adapters_of_another_base_model_are_refused(tmp_path: Path, model_path: str):
    """Adapters whose base model has other sizes, even where their shapes fit, do not belong to this model."""
    base = asdict(load_pretrained(model_path, device="cpu").config)
    other = LlamaConfig(**{**base, "max_seq_len": 128})
    save_checkpoint(tmp_path / "other.pt", asdict(other), Llama(other).state_dict())
    model = LlamaEmbeddingClassifier(ClassifierConfig(str(tmp_path / "other.pt"), 2, option="lora"))
    saved = {"model_args": base, "lora": {}, "model_config": {"pretrained_model_path": str(tmp_path / "other.pt")}}
    with pytest.raises(InputError, match=r"adapters\.pt: its LoRA adapters were trained on a model of sizes"):
        load_weights(model, saved, "adapters.pt")


def test_adapters_on_another_base_of_the_same_sizes_are_refused(tmp_path: Path, model_path: str):
    """The base checkpoint replaced by other weights of the same sizes: the adapters would merge onto a model they
    were not trained on."""
    base = tmp_path / "stories42M.pt"
    shutil.copyfile(model_path, base)
    config = ClassifierConfig(str(base), 2, option="lora")
    saved = checkpoint_data(LlamaEmbeddingClassifier(config), {}, config, ["bad", "good"], 0, 0.5)
    load_weights(LlamaEmbeddingClassifier(config), saved, "lora.pt")  # the same base: fine
    model_args, _, state_dict, _ = read_llama(base)
    state_dict["norm.weight"] = state_dict["norm.weight"] * 1.01
    save_checkpoint(base, model_args, state_dict)
    with pytest.raises(InputError, match=rf"lora\.pt: its LoRA adapters were trained on other base weights "
                                              rf"than those {base} now holds"):
        load_weights(LlamaEmbeddingClassifier(config), saved, "lora.pt")
