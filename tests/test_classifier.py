"""The two classifiers read each sentence at its last real token, whatever it is batched with."""

import pytest
import torch
import torch.nn.functional as F

from classifier import ClassifierConfig, LlamaEmbeddingClassifier, LlamaZeroShotClassifier
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


def test_zero_shot_scores_at_last_real_token(model_path: str, tokenizer: Tokenizer):
    model = LlamaZeroShotClassifier(ClassifierConfig(model_path, len(LABELS)), tokenizer, LABELS)
    assert [len(ids) for ids in model.label_name_ids] == [1, 3, 4, 1]
    ids, batch, lengths = padded_batch(tokenizer)
    with torch.no_grad():
        batched = model(batch, lengths)
        for i, x in enumerate(ids):
            alone = model(torch.tensor([x]), torch.tensor([len(x)]))
            # the course's rule on an unpadded sentence, through Llama.forward's last-position logits
            logits, _ = model.llama(torch.tensor([x]))
            log_probs = F.log_softmax(logits[0, -1], dim=-1)
            expected = torch.stack([log_probs[label].sum() for label in model.label_name_ids])
            torch.testing.assert_close(alone[0], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched[i], expected, atol=1e-5, rtol=1e-5)
            assert batched[i].argmax() == expected.argmax()
        last_column = model(batch, torch.full_like(lengths, batch.shape[1]))  # the course's flawed reading
    assert not torch.allclose(last_column[0], batched[0], atol=1e-3)


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


def test_embedding_classifier_reads_last_real_token(model_path: str, tokenizer: Tokenizer):
    torch.manual_seed(1)
    model = LlamaEmbeddingClassifier(ClassifierConfig(model_path, 5, hidden_dropout_prob=0.3)).eval()
    ids, batch, lengths = padded_batch(tokenizer)
    with torch.no_grad():
        batched = model(batch, lengths)
        for i, x in enumerate(ids):
            h = model.llama.hidden_states(torch.tensor([x]))[0, -1]
            expected = F.log_softmax(model.classifier_head(h), dim=-1)
            torch.testing.assert_close(batched[i], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model(torch.tensor([x]), torch.tensor([len(x)]))[0], expected,
                                       atol=1e-5, rtol=1e-5)
        last_column = model(batch, torch.full_like(lengths, batch.shape[1]))
    assert not torch.allclose(last_column[0], batched[0], atol=1e-3)
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
