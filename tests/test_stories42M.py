"""The real stories42M.pt, when it is present (beside the repository, or in $MINLLAMA_ASSET_MIRROR): the course's
sanity check passes, and greedy continuations of the course's prompt are the published ones in each semantics."""
import os
from pathlib import Path

import pytest
import torch

import run_llama
import sanity_check
from llama import load_pretrained
from tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent


def find_stories42m() -> Path | None:
    mirror = os.environ.get("MINLLAMA_ASSET_MIRROR")
    for folder in [REPO] + ([Path(mirror)] if mirror else []):
        if (folder / "stories42M.pt").is_file():
            return folder / "stories42M.pt"
    return None


CHECKPOINT = find_stories42m()
pytestmark = pytest.mark.skipif(CHECKPOINT is None, reason="stories42M.pt is not present (python assets.py --all)")


def test_sanity_check_passes(asset_mirror: Path, capsys):
    assert sanity_check.main(str(CHECKPOINT), str(asset_mirror / "sanity_check.data")) == 0
    assert capsys.readouterr().out == "Your Llama implementation is correct!\n"


@pytest.mark.parametrize("causal, continuation", [
    (False, "this day. He was playing with his toy car"),  # the course's reference
    (True, "the most exciting thing you can do. He was always so eager"),  # Llama 2 with its causal mask
])
def test_greedy_continuation_of_the_courses_prompt(tokenizer_model: str, causal: bool, continuation: str):
    model = load_pretrained(str(CHECKPOINT), causal=causal)
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    prompt = torch.tensor([tokenizer.encode(run_llama.PREFIX, bos=True, eos=False)])
    text = tokenizer.decode(model.generate(prompt, 75, temperature=0.0)[0].tolist())
    assert text.startswith(run_llama.PREFIX)
    assert text[len(run_llama.PREFIX):].strip().startswith(continuation)
