"""--option generate from the user's own prompt: --prompt, --max_new_tokens, --temperature, --top_k and --stream."""
import re
import sys
from pathlib import Path

import pytest
import torch

import llama as llama_module
import options
import run_llama
from llama import load_pretrained
from run_llama import InputError
from tokenizer import Tokenizer


@pytest.mark.parametrize("causal", [False, True], ids=["course", "causal"])
def test_a_prompt_of_ones_own_is_continued_at_each_temperature(tmp_path: Path, monkeypatch, model_path: str,
                                                              tokenizer_model: str, causal: bool):
    monkeypatch.chdir(tmp_path)
    run_llama.main(["--option", "generate", "--prompt", "Once upon a time", "--max_new_tokens", "6",
                    "--temperature", "0", "0.5", "--temperature", "2", "--top_k", "3",
                    "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model,
                    *(["--causal"] if causal else [])])
    names = ["generated-sentence-temp-0.txt", "generated-sentence-temp-0.5.txt", "generated-sentence-temp-2.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    texts = [(tmp_path / name).read_bytes().decode("utf-8") for name in names]
    assert all(text.startswith("Once upon a time") for text in texts)
    tokenizer = Tokenizer(tokenizer_model=tokenizer_model)
    prompt = torch.tensor([tokenizer.encode("Once upon a time", bos=True, eos=False)])
    greedy = load_pretrained(model_path, causal=causal).generate(prompt, 6, temperature=0.0, use_cache=False)
    assert texts[0] == tokenizer.decode(greedy[0].tolist())


@pytest.mark.parametrize("how", ["--stream", "terminal", "neither"])
def test_stream_prints_each_token_as_it_is_drawn(monkeypatch, tmp_path: Path, capsys, model_path: str,
                                                 tokenizer_model: str, how: str):
    monkeypatch.chdir(tmp_path)
    if how == "terminal":
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    printed_at_step = []
    sample = llama_module.sample

    def recording_sample(*args, **kwargs):  # what stdout received since the previous token was drawn
        printed_at_step.append(capsys.readouterr().out)
        return sample(*args, **kwargs)

    monkeypatch.setattr(llama_module, "sample", recording_sample)
    run_llama.main(["--option", "generate", "--prompt", "Once upon a time", "--max_new_tokens", "8",
                    "--temperature", "1", "--pretrained-model-path", model_path, "--tokenizer-model", tokenizer_model,
                    *(["--stream"] if how == "--stream" else [])])
    during = printed_at_step[1:]  # after the first token was drawn, before the last one
    text = (tmp_path / "generated-sentence-temp-1.txt").read_text(encoding="utf-8")
    if how == "neither":
        assert during == [""] * 7 and text in capsys.readouterr().out
    else:
        assert sum(bool(chunk) for chunk in during) >= 4  # a random tiny model may draw a piece that prints nothing
        streamed = printed_at_step[0].split("Temperature is 1.0\n")[1] + "".join(during) + capsys.readouterr().out
        assert streamed.startswith(text + "\n---------------\n")


def test_a_prompt_longer_than_the_context_is_one_line(tmp_path: Path, monkeypatch, model_path: str,
                                                     tokenizer_model: str):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"^--prompt: \d+ tokens, more than the model's max_seq_len=1024: pass a "
                                         r"shorter prompt$"):
        run_llama.main(["--option", "generate", "--prompt", "word " * 1100, "--pretrained-model-path", model_path,
                        "--tokenizer-model", tokenizer_model])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--max_new_tokens", "-3"], "--max_new_tokens must be at least 1, got -3"),
    (["--top_k", "0"], "--top_k must be at least 1, got 0"),
    (["--temperature", "nan"], "--temperature must be finite, at least 0 and each given once, got nan"),
    (["--temperature", "0", "inf"], "--temperature must be finite, at least 0 and each given once, got inf"),
    (["--temperature", "-0.5"], "--temperature must be finite, at least 0 and each given once, got -0.5"),
    (["--temperature", "1", "--temperature", "1.0"], "--temperature must be finite, at least 0 and each given "
                                                     "once, got 1.0"),
])
def test_bad_generation_flags_are_one_line(capsys, flags: list[str], message: str):
    with pytest.raises(SystemExit):
        options.parse_args(["--option", "generate", *flags], check_files=False)
    assert capsys.readouterr().err.splitlines()[-1] == f"run_llama.py: error: {message}"


def test_each_temperatures_file_is_checked_before_any_work(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "generated-sentence-temp-0.7.txt").mkdir()
    with pytest.raises(InputError, match=r"^cannot write --temperature 0\.7 generated-sentence-temp-0\.7\.txt: "):
        options.parse_args(["--option", "generate", "--temperature", "0", "0.7"])
    with pytest.raises(SystemExit):
        options.parse_args(["--option", "generate", "--temperature", "0", "0.7", "--generated_sentence_low_temp_out",
                              "generated-sentence-temp-0.7.txt"])
    assert re.search(r"--generated_sentence_low_temp_out generated-sentence-temp-0\.7\.txt and --temperature 0\.7 "
                     r"generated-sentence-temp-0\.7\.txt are one file", capsys.readouterr().err)
