"""The course's check of the Llama implementation: `python sanity_check.py` prints "Your Llama implementation is
correct!" or says what differs.

It runs the course's stories42M.pt (or the checkpoint given with --pretrained-model-path) on two fixed rows of token
ids and compares the logits (of the last position) and the final hidden states with those in sanity_check.data,
which the course computed from stories42M.pt with its reference implementation, whose attention has no mask: so the
check is always of that semantics (LlamaConfig.causal=False), and a checkpoint of other sizes is refused as such. One
of its sizes with other weights (trained anew, say) gives other outputs whatever the implementation: a mismatch names
both causes. Both files are fetched if missing (see assets.py).
"""
import argparse
import sys
from pathlib import Path

import torch

import assets
import files
from checkpoint import read_torch_file
from config import DEFAULT_CHECKPOINT, DEFAULT_SEED, LlamaConfig
from files import InputError
from llama import load_pretrained

SENT_IDS = [[101, 7592, 2088, 102, 0, 0, 0, 0],
            [101, 7592, 15756, 2897, 2005, 17953, 2361, 102]]
ATOL, RTOL = 1e-5, 1e-3
STORIES42M = LlamaConfig()  # the defaults are stories42M's sizes, those sanity_check.data was computed with
SIZES = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim")  # what the weights' shapes show


def compare(outputs: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """A line for each tensor of `outputs` that its namesake in `expected` does not match within ATOL/RTOL."""
    problems = []
    for name, got in outputs.items():
        want, got = expected.get(name), got.cpu()
        if want is None:
            problems.append(f"{name}: not in the expected data")
        elif got.shape != want.shape:
            problems.append(f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
        elif not torch.allclose(got, want, atol=ATOL, rtol=RTOL):
            problems.append(f"{name}: max |difference| {(got - want).abs().max().item():.3g} "
                            f"is beyond atol={ATOL}, rtol={RTOL}")
    return problems


def load_expected(path: str | Path) -> dict[str, torch.Tensor]:
    """The reference outputs saved in `path`."""
    try:
        data = read_torch_file(path)
    except InputError as e:
        raise InputError(f"{e}; delete it to fetch it again") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def main(checkpoint: str = DEFAULT_CHECKPOINT, data: str = "sanity_check.data") -> int:
    """Run the check; returns the exit status (0 when the outputs match; 1 once an InputError is reported:
    files.status)."""
    return files.status(lambda: check(checkpoint, data))


def check(checkpoint: str, data: str) -> int:
    """Compare the outputs of `checkpoint` with those saved in `data`; returns the exit status."""
    torch.manual_seed(DEFAULT_SEED)
    expected = load_expected(assets.ensure(data))  # each file is fetched if missing, before it is read
    model = load_pretrained(assets.ensure(checkpoint), causal=False)  # the course's reference semantics
    if differ := [f"{name}={getattr(model.config, name)}, not {getattr(STORIES42M, name)}"
                  for name in SIZES if getattr(model.config, name) != getattr(STORIES42M, name)]:
        raise InputError(f"{checkpoint}: not of stories42M's sizes ({'; '.join(differ)}): {data} holds "
                         "stories42M.pt's outputs, so the check is made for that checkpoint only")
    with torch.no_grad():
        logits, hidden_states = model(torch.tensor(SENT_IDS, device=model.output.weight.device))
    problems = compare({"logits": logits, "hidden_states": hidden_states}, expected)
    if problems:
        print(f"The outputs of {checkpoint} do not match {data}:\n  " + "\n  ".join(problems) + f"\n{data} holds the "
              f"outputs of the published stories42M.pt: if {checkpoint} is not that file (other weights of its sizes), "
              "its weights alone make them differ; if it is, your Llama implementation does not match the reference",
              file=sys.stderr)
        return 1
    print("Your Llama implementation is correct!")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--pretrained-model-path", default=DEFAULT_CHECKPOINT,
                        help=f"The checkpoint to check, of stories42M's sizes (default: {DEFAULT_CHECKPOINT}).")
    checkpoint = parser.parse_args().pretrained_model_path
    files.cli(lambda: main(checkpoint))
