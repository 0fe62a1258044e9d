"""The real stories42M.pt (beside the repository, or fetched like every public file of the tests): the course's
sanity check passes, and greedy continuations of the course's prompt are the published ones in each semantics."""
from pathlib import Path

import pytest
import torch

import run_llama
import sanity_check
from llama import load_pretrained
from tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stories42m(asset) -> str:
    """The checkpoint beside the repository when it is there, else fetched like every public file of the tests."""
    return str(REPO / "stories42M.pt") if (REPO / "stories42M.pt").is_file() else str(asset("stories42M.pt"))


def test_sanity_check_passes(stories42m: str, asset, capsys):
    assert sanity_check.main(stories42m, str(asset("sanity_check.data"))) == 0
    assert capsys.readouterr().out == "Your Llama implementation is correct!\n"


@pytest.mark.parametrize("causal, continuation", [
    (False, "this day. He was playing with his toy car"),  # the course's reference
    (True, "the most exciting thing you can do. He was always so eager"),  # Llama 2 with its causal mask
])
def test_greedy_continuation_of_the_courses_prompt(stories42m: str, tokenizer_model: str, causal: bool, continuation: str):
    model = load_pretrained(stories42m, causal=causal)
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    prompt = torch.tensor([tokenizer.encode(run_llama.PREFIX, bos=True, eos=False)])
    text = tokenizer.decode(model.generate(prompt, 75, temperature=0.0)[0].tolist())
    assert text.startswith(run_llama.PREFIX)
    assert text[len(run_llama.PREFIX):].strip().startswith(continuation)
