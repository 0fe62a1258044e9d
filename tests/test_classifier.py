"""The two classifiers: in the course's semantics they read the last column, exactly as the course's reference does
(so a sentence's prediction depends on its batch's padding); with --causal each sentence's last real token, whatever
it is batched with."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from classifier import LlamaEmbeddingClassifier, LlamaZeroShotClassifier
from config import ClassifierConfig
from tokenizer import Tokenizer

LABELS = ["awful", "mediocre", "lukewarm", "good"]  # two of them several tokens long
SENTENCES = ["Dull .", "A gorgeous , witty , seductive movie .",
             "The story is so thin that the actors have nothing to play , and it drags on for two long hours ."]


@pytest.fixture(scope="module")
def tokenizer(tokenizer_model: str) -> Tokenizer:
    return Tokenizer(tokenizer_model=tokenizer_model)


def padded_batch(tokenizer: Tokenizer) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """The SENTENCES' ids, and the same right-padded into one batch with their lengths; the first is the shortest."""
    ids = [tokenizer.encode(s, bos=True, eos=False) for s in SENTENCES]
    width = max(map(len, ids))
    batch = torch.tensor([x + [tokenizer.pad_id] * (width - len(x)) for x in ids])
    assert len(ids[0]) < width
    return ids, batch, torch.tensor([len(x) for x in ids])


def course_zero_shot_scores(llama, input_ids: torch.Tensor, label_name_ids: list[list[int]]) -> torch.Tensor:
    """The course's rule, spelled out: Llama.forward's last-position logits, Σ of each label's tokens' log-probs."""
    logits, _ = llama(input_ids)
    log_probs = F.log_softmax(logits[:, -1], dim=-1)
    return torch.stack([log_probs[:, label].sum(-1) for label in label_name_ids], dim=-1)


@pytest.mark.parametrize("causal", [False, True])
def test_zero_shot_scores(model_path: str, tokenizer: Tokenizer, causal: bool):
    model = LlamaZeroShotClassifier(ClassifierConfig(model_path, len(LABELS), causal=causal), tokenizer, LABELS)
    assert model.llama.config.causal is causal
    assert [len(ids) for ids in model.label_name_ids] == [1, 3, 4, 1]
    ids, batch, lengths = padded_batch(tokenizer)
    with torch.no_grad():
        batched = model(batch, lengths)
        torch.testing.assert_close(model(batch), course_zero_shot_scores(model.llama, batch, model.label_name_ids),
                                   atol=1e-5, rtol=1e-5)
        for i, x in enumerate(ids):
            alone = course_zero_shot_scores(model.llama, torch.tensor([x]), model.label_name_ids)[0]
            torch.testing.assert_close(model(torch.tensor([x]))[0], alone, atol=1e-5, rtol=1e-5)
            if causal:  # the last real token, whatever the padding
                torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=1e-5)
    if causal:  # the last column is a pad for the short row: another number
        assert not torch.allclose(model(batch)[0], batched[0], atol=1e-3)
    else:  # the course's last column, pads and all, whatever lengths say; the short row's pads change its scores
        torch.testing.assert_close(batched, model(batch), atol=0, rtol=0)
        assert not torch.allclose(batched[0], alone_scores(model, ids[0]), atol=1e-3)


def alone_scores(model: LlamaZeroShotClassifier, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


def test_classifiers_take_the_courses_config(model_path: str, tokenizer: Tokenizer):
    """The course builds both classifiers from a SimpleNamespace of its own and calls them as model(input_ids)."""
    prompt_config = SimpleNamespace(pretrained_model_path=model_path, label_names=LABELS, num_labels=len(LABELS),
                                    data_dir=".", option="prompt")
    zero_shot = LlamaZeroShotClassifier(prompt_config, tokenizer, LABELS)
    finetune_config = SimpleNamespace(hidden_dropout_prob=0.3, pretrained_model_path=model_path, num_labels=5,
                                      data_dir=".", option="finetune")
    embedding = LlamaEmbeddingClassifier(finetune_config).eval()
    _, batch, _ = padded_batch(tokenizer)
    with torch.no_grad():
        assert zero_shot(batch).shape == (len(SENTENCES), len(LABELS))
        assert embedding(batch).shape == (len(SENTENCES), 5)
    assert not zero_shot.llama.config.causal and not embedding.llama.config.causal
    assert all(p.requires_grad for p in embedding.llama.parameters())


def test_zero_shot_projects_one_position_per_row(model_path: str, tokenizer: Tokenizer):
    model = LlamaZeroShotClassifier(ClassifierConfig(model_path, len(LABELS)), tokenizer, LABELS)
    _, batch, lengths = padded_batch(tokenizer)
    shapes = []
    model.llama.output.register_forward_hook(lambda module, inputs, output: shapes.append(tuple(inputs[0].shape)))
    with torch.no_grad():
        model(batch, lengths)
    assert shapes == [(len(SENTENCES), model.llama.config.dim)]
    assert not any(p.requires_grad for p in model.llama.parameters())


def test_zero_shot_needs_one_name_per_label(model_path: str, tokenizer: Tokenizer):
    with pytest.raises(ValueError, match="2 label names"):
        LlamaZeroShotClassifier(ClassifierConfig(model_path, 5), tokenizer, ["bad", "good"])
    with pytest.raises(ValueError, match="at least one token"):
        LlamaZeroShotClassifier(ClassifierConfig(model_path, 2), tokenizer, ["bad", ""])


@pytest.mark.parametrize("causal", [False, True])
def test_embedding_classifier_reads_its_position(model_path: str, tokenizer: Tokenizer, causal: bool):
    torch.manual_seed(1)
    model = LlamaEmbeddingClassifier(ClassifierConfig(model_path, 5, hidden_dropout_prob=0.3, causal=causal)).eval()
    ids, batch, lengths = padded_batch(tokenizer)
    with torch.no_grad():
        batched = model(batch, lengths)
        last_column = F.log_softmax(model.classifier_head(model.llama(batch)[1][:, -1]), dim=-1)
        for i, x in enumerate(ids):
            h = model.llama(torch.tensor([x]))[1][0, -1]
            alone = F.log_softmax(model.classifier_head(h), dim=-1)
            torch.testing.assert_close(model(torch.tensor([x]))[0], alone, atol=1e-5, rtol=1e-5)
            if causal:
                torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=1e-5)
    if causal:
        assert not torch.allclose(last_column[0], batched[0], atol=1e-3)
    else:
        torch.testing.assert_close(batched, last_column, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(model(batch), last_column, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(batched.exp().sum(-1), torch.ones(len(SENTENCES)))


@pytest.mark.parametrize("option, llama_trained", [("pretrain", False), ("finetune", True)])
def test_option_freezes_or_trains_llama(model_path: str, tokenizer: Tokenizer, option: str, llama_trained: bool):
    model = LlamaEmbeddingClassifier(ClassifierConfig(model_path, 2, option=option))
    assert model.classifier_head.in_features == model.llama.config.dim and model.classifier_head.out_features == 2
    _, batch, lengths = padded_batch(tokenizer)
    F.nll_loss(model(batch, lengths), torch.tensor([0, 1, 0])).backward()
    assert all(p.grad is not None for p in model.classifier_head.parameters())
    assert all((p.grad is not None) == llama_trained for p in model.llama.parameters())
    assert set(model.state_dict()) == {f"llama.{k}" for k in model.llama.state_dict()} | {
        "classifier_head.weight", "classifier_head.bias"}


def test_unknown_option_is_an_error(model_path: str):
    with pytest.raises(ValueError, match="'lora'.*not 'prompt'"):
        LlamaEmbeddingClassifier(ClassifierConfig(model_path, 2, option="prompt"))


def test_lora_option_trains_only_the_adapters_and_the_head(model_path: str, tokenizer: Tokenizer):
    targets = ("compute_key", "compute_output")
    config = ClassifierConfig(model_path, 2, option="lora", lora_rank=2, lora_alpha=4.0, lora_targets=targets)
    model = LlamaEmbeddingClassifier(config)
    _, batch, lengths = padded_batch(tokenizer)
    F.nll_loss(model(batch, lengths), torch.tensor([0, 1, 0])).backward()
    adapters = {f"llama.layers.{i}.attention.{target}.lora_{m}" for i in range(2) for target in targets for m in "AB"}
    trained = adapters | {"classifier_head.weight", "classifier_head.bias"}
    assert {name for name, p in model.named_parameters() if p.requires_grad} == trained
    assert {name for name, p in model.named_parameters() if p.grad is not None} == trained
    adapter = model.llama.layers[1].attention.compute_output
    assert (adapter.rank, adapter.scaling, tuple(adapter.lora_A.shape)) == (2, 2.0, (2, 32))
