"""Export a checkpoint to Hugging Face transformers or to llama2.c.

    python convert.py CHECKPOINT --to hf OUT_DIR       # config.json + model.safetensors for LlamaForCausalLM
    python convert.py CHECKPOINT --to llama2c OUT.bin  # llama2.c's version-1 float32 export

CHECKPOINT is any file load_pretrained reads, or a classifier trained by run_llama.py, of which the Llama part is
exported (neither format has a place for the classifier head). A LoRA classifier's checkpoint holds only its adapters:
they are loaded onto its base model and merged into the base weights (lora.merge_lora) first.

transformers' LlamaForCausalLM always masks attention causally: it computes the function that ours computes with
--causal (LlamaConfig(causal=True)), so the Hugging Face export gives our logits in that semantics only; from the
same weights, the course's default semantics (attention without a mask) gives other logits. llama2.c's run.c is
causal too. Apart from that, transformers' Llama computes ours under other tensor names, with one difference of
layout: its rotary embedding turns the pairs (x[i], x[i + head_dim/2]) of a head ("rotate_half"), ours the neighbours
(x[2i], x[2i+1]), by the same angles. Reordering the rows of the query and key projections in each head, even rows
first and odd rows after, makes its pair i hold our pair i; queries and keys are then permuted alike, which leaves
every dot product q·k, and so the attention, unchanged. The names and that reordering are format knowledge, kept in
checkpoint.py (hf_state_dict); this module writes the export.
"""
import argparse
import importlib
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import assets
import files
from checkpoint import (LoraCheckpointError, hf_state_dict, is_tied, read_classifier_checkpoint, read_llama,
                        write_llama2c_bin)
from classifier import LlamaEmbeddingClassifier, load_weights
from config import ClassifierConfig, LlamaConfig
from files import InputError
from llama import Llama
from lora import merge_lora

if TYPE_CHECKING:
    import transformers

ROPE_THETA = 10000.0  # rope.py's default base θ, the one Llama 2 uses
HF_FILES = ("config.json", "model.safetensors")


def import_hf(module: str):
    """Import transformers or safetensors, which only the Hugging Face export (and the tests) need; without them,
    an InputError says how to install them."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"the Hugging Face export needs the {module.partition('.')[0]} package: "
                         "pip install transformers safetensors (or pip install -r requirements-test.txt)") from None


def hf_config(config: LlamaConfig, tie_word_embeddings: bool) -> "transformers.LlamaConfig":
    """The transformers.LlamaConfig of the same architecture: no biases, SiLU gates, rotary base 10000."""
    transformers = import_hf("transformers")
    return transformers.LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.layer_norm_eps,
        rope_theta=ROPE_THETA,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,  # the Llama 2 tokenizer's <s> and </s>
        eos_token_id=2,
    )


def to_hf(model: Llama) -> "transformers.LlamaForCausalLM":
    """A transformers LlamaForCausalLM holding the weights of `model`, in eval mode, on the same device."""
    transformers = import_hf("transformers")
    state_dict = model.state_dict()
    hf = transformers.LlamaForCausalLM(hf_config(model.config, is_tied(state_dict)))
    hf.load_state_dict(hf_state_dict(state_dict, model.config), strict=True)
    return hf.to(model.output.weight.device).eval()


def save_hf(out_dir: str | os.PathLike, config: LlamaConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """Write config.json and model.safetensors, which LlamaForCausalLM.from_pretrained(out_dir) loads.

    Into a new out_dir, both are written into a temporary folder beside it, then renamed to out_dir; into an existing
    one, each is written as files.write_atomically writes a file. So out_dir never holds a half-written file. Files
    already in out_dir other than these two are left alone.
    """
    tied = is_tied(state_dict)
    llama_config = hf_config(config, tied)
    safetensors_torch = import_hf("safetensors.torch")
    tensors = hf_state_dict(state_dict, config)
    if tied:
        del tensors["lm_head.weight"]  # stored once; from_pretrained ties it to the embedding again
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in tensors.items()}
    contents = dict(zip(HF_FILES, (llama_config.to_json_string().encode(),
                                   safetensors_torch.save(tensors, metadata={"format": "pt"}))))
    out_dir = files.destination(out_dir)
    if out_dir.is_dir():
        for name, data in contents.items():
            files.write_atomically(out_dir / name, lambda f: f.write(data))
        return
    files.remove_stale(out_dir.absolute().parent)
    tmp = files.temporary(out_dir)
    try:
        with files.writing(out_dir):
            tmp.mkdir()
            for name, data in contents.items():
                (tmp / name).write_bytes(data)
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_output(out: str, to: str, inputs: list[Path]) -> None:
    """Refuse, before any work, an output that files.output_problem refuses (--to hf: a folder, and the two files
    in it), or that would replace one of the inputs (after following links)."""
    targets = [Path(out) / name for name in HF_FILES] if to == "hf" else [Path(out)]
    inside = [(target, False) for target in targets if to == "hf" and Path(out).is_dir()]
    for path, folder in [(out, to == "hf"), *inside]:
        problem = files.output_problem(path, folder)
        if problem:
            raise InputError(f"cannot write {path or 'OUT'}: {problem}"
                             + (" (--to hf writes a folder)" if folder and problem.startswith("it is") else ""))
    for target in targets:
        for path in inputs:
            if target.resolve() == path.resolve():
                raise InputError(f"{target} is the input {path}: the export would replace it; write it elsewhere")


def read_for_export(path: Path) -> tuple[LlamaConfig, dict[str, torch.Tensor], dict[str, torch.Tensor], list[Path]]:
    """(config, Llama state dict, classifier head, the files read) of any checkpoint; see the module docstring."""
    try:
        _, config, state_dict, head = read_llama(path)
        return config, state_dict, head, [path]
    except LoraCheckpointError:
        pass  # a LoRA classifier: read again as such (it is small), its adapters merged below into its base model
    saved = read_classifier_checkpoint(path)
    try:
        model = LlamaEmbeddingClassifier(ClassifierConfig(**saved["model_config"]))
    except (InputError, ValueError) as e:  # the base checkpoint, or a model_config the classifier refuses
        raise InputError(f"{path}: a LoRA checkpoint, whose base model cannot be loaded: {e}") from None
    load_weights(model, saved, str(path))
    merge_lora(model)
    head = {f"classifier_head.{name}": t for name, t in model.classifier_head.state_dict().items()}
    base = Path(saved["model_config"]["pretrained_model_path"])
    return model.llama.config, model.llama.state_dict(), head, [path, base]


def export(checkpoint: str, to: str, out: str) -> None:
    """Write the Llama of `checkpoint` (fetched if missing) to `out` in the format `to`, and say what was written.
    An output that cannot be written is refused before the checkpoint is fetched or read."""
    check_output(out, to, [Path(checkpoint)])
    path = assets.ensure(checkpoint)
    config, state_dict, classifier, inputs = read_for_export(path)
    check_output(out, to, inputs)
    if to == "hf":
        save_hf(out, config, state_dict)
    else:
        write_llama2c_bin(out, asdict(config), state_dict, version=1)
    print(f"wrote {out} from {path}")
    if classifier:
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in classifier.items())
        print(f"note: {path} is a fine-tuned classifier; its Llama was exported, its classifier head ({shapes}) "
              "was not (neither format can hold it)")


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (1 once an InputError is reported: files.status)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="A file load_pretrained reads, or a classifier fine-tuned by run_llama.py.")
    parser.add_argument("--to", required=True, choices=("hf", "llama2c"),
                        help="hf: a folder with config.json and model.safetensors, for transformers' "
                             "LlamaForCausalLM, which computes the --causal semantics; llama2c: a version-1 .bin "
                             "file (run.c is causal too).")
    parser.add_argument("out", metavar="OUT", help="The folder (hf) or file (llama2c) to write.")
    args = parser.parse_args(argv)
    return files.status(lambda: export(args.checkpoint, args.to, args.out))


if __name__ == "__main__":
    files.cli(main)
