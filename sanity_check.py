"""The course's check of the Llama implementation: `python sanity_check.py`.

It runs the course's stories42M.pt on two fixed rows of token ids and compares the logits (of the last position)
and the final hidden states with those in sanity_check.data, which the course computed with its reference
implementation, whose attention has no mask: so the check is always of that semantics (LlamaConfig.causal=False).
Both files are fetched if missing (see assets.py).
"""
import sys
from pathlib import Path

import torch

import assets
import files
from checkpoint import read_torch_file
from llama import load_pretrained

SEED = 1337
SENT_IDS = [[101, 7592, 2088, 102, 0, 0, 0, 0],
            [101, 7592, 15756, 2897, 2005, 17953, 2361, 102]]
ATOL, RTOL = 1e-5, 1e-3


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
    except ValueError as e:
        raise ValueError(f"{e}; delete it to fetch it again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def main(checkpoint: str = "stories42M.pt", data: str = "sanity_check.data") -> int:
    """Run the check; returns the exit status (0 when the outputs match)."""
    torch.manual_seed(SEED)
    try:
        expected = load_expected(assets.ensure(data))  # each file is fetched if missing, before it is read
        model = load_pretrained(assets.ensure(checkpoint), causal=False)  # the course's reference semantics
        largest = max(max(row) for row in SENT_IDS)
        if largest >= model.config.vocab_size:
            raise ValueError(f"{checkpoint}: a vocabulary of {model.config.vocab_size} pieces, but the check feeds "
                             f"token ids up to {largest}: it is made for stories42M.pt (32000 pieces)")
    except (OSError, ValueError, assets.AssetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with torch.no_grad():
        logits, hidden_states = model(torch.tensor(SENT_IDS, device=model.output.weight.device))
    problems = compare({"logits": logits, "hidden_states": hidden_states}, expected)
    if problems:
        print("Your Llama implementation does not match the reference:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("Your Llama implementation is correct!")
    return 0


if __name__ == "__main__":
    files.cli(main)
