"""Sentiment classifiers on top of a pretrained Llama: zero-shot prompting and a fine-tuned linear head.

Both take right-padded batches of token ids and read one position per row, as their Llama's semantics requires.
Without a mask (the course's reference) every position has seen the whole row, pads included, and they read the
last column, as the course does. A causal model has seen the sentence's end only from its last real token, so
there they read each row at that token (given the rows' lengths); a pad column would score something else.
"""
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from checkpoint import weights_digest
from config import ClassifierConfig
from files import InputError
from fast import finite, hidden_state_at, install, last_column
from llama import Llama, load_pretrained
from lora import add_lora, is_adapter, load_lora_state_dict
from tokenizer import Tokenizer


def read_positions(input_ids: torch.Tensor, lengths: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """The position (batch,) a classifier reads in each row of input_ids (batch, seqlen): the last column without a
    mask or without lengths, else the last real token lengths[b] − 1 of each row b."""
    if not causal or lengths is None:
        return last_column(input_ids)
    return lengths.to(input_ids.device) - 1


def read_position(h: torch.Tensor, lengths: torch.Tensor | None, causal: bool) -> torch.Tensor:
    """h (batch, seqlen, dim) at the position a classifier reads (batch, dim), see read_positions."""
    return h[torch.arange(h.shape[0], device=h.device), read_positions(h[..., 0], lengths, causal)]


def hidden_state_read(llama: Llama, input_ids: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Llama's final hidden state (batch, dim) at the position read in each row (read_positions); the last layer's
    feed-forward network runs at that position only (fast.hidden_state_at)."""
    return hidden_state_at(llama, input_ids, read_positions(input_ids, lengths, llama.config.causal))


class LlamaZeroShotClassifier(nn.Module):
    """A frozen Llama that scores each label as a continuation of the prompt (the course's rule): the score of a
    label is Σ log p(t | prompt) over the label's tokens t, all read as the next token after the prompt."""

    def __init__(self, config: ClassifierConfig, tokenizer: Tokenizer, label_names: list[str]):
        super().__init__()
        config = ClassifierConfig.of(config)
        if len(label_names) != config.num_labels:
            raise ValueError(f"{len(label_names)} label names {label_names} for num_labels={config.num_labels}")
        self.num_labels = config.num_labels
        self.tokenizer = tokenizer
        self.label_name_ids = [tokenizer.encode(label, bos=False, eos=False) for label in label_names]
        if not all(self.label_name_ids):
            raise ValueError(f"every label name needs at least one token: {label_names}")
        self.llama = install(load_pretrained(config.pretrained_model_path, causal=config.causal))
        for param in self.llama.parameters():  # zero-shot classification does not update Llama
            param.requires_grad = False
        # all labels' tokens in one row, and the label each belongs to; buffers, so they move with the model
        label_tokens = [(i, token) for i, ids in enumerate(self.label_name_ids) for token in ids]
        self.register_buffer("label_of_token", torch.tensor([i for i, _ in label_tokens]), persistent=False)
        self.register_buffer("label_tokens", torch.tensor([token for _, token in label_tokens]), persistent=False)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Label scores (batch, num_labels) for right-padded prompts input_ids (batch, seqlen); lengths (batch,), the
        rows' numbers of real tokens, matter only to a causal model (see read_positions)."""
        h = hidden_state_read(self.llama, input_ids, lengths)
        logits = finite(self.llama.output(h))  # the vocabulary at one position per row
        log_probs = F.log_softmax(logits.float(), dim=-1)
        token_log_probs = log_probs[:, self.label_tokens]
        scores = token_log_probs.new_zeros(len(h), self.num_labels)
        return scores.index_add_(1, self.label_of_token, token_log_probs)  # Σ over each label's tokens


class LlamaEmbeddingClassifier(nn.Module):
    """log_softmax(W·dropout(h) + b), h being Llama's final hidden state at the position read (read_positions).

    With option "lora", Llama is frozen and its attention projections lora_targets get LoRA adapters (lora.py), so
    only the adapters and the head train.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        config = ClassifierConfig.of(config)
        if config.option not in ("pretrain", "finetune", "lora"):
            raise ValueError(f"option must be 'pretrain' (Llama frozen), 'finetune' (Llama trained) or 'lora' "
                             f"(LoRA adapters trained), not {config.option!r}")
        self.num_labels = config.num_labels
        self.llama = install(load_pretrained(config.pretrained_model_path, causal=config.causal))
        for param in self.llama.parameters():
            param.requires_grad = config.option == "finetune"
        if config.option == "lora":
            add_lora(self.llama, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier_head = nn.Linear(self.llama.config.dim, self.num_labels)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probabilities (batch, num_labels) for right-padded input_ids (batch, seqlen); lengths (batch,), the
        rows' numbers of real tokens, matter only to a causal model (see read_positions)."""
        h = hidden_state_read(self.llama, input_ids, lengths)
        return F.log_softmax(self.classifier_head(self.dropout(h)), dim=-1)


def base_digest(model: LlamaEmbeddingClassifier) -> str:
    """checkpoint.weights_digest of the base model under the LoRA adapters."""
    state_dict = model.llama.state_dict()
    return weights_digest({name: t for name, t in state_dict.items() if not is_adapter(name)})


def sizes(model_args: dict) -> dict:
    """model_args without `causal`: the sizes of the weights, which do not depend on the semantics."""
    return {key: value for key, value in model_args.items() if key != "causal"}


def load_weights(model: LlamaEmbeddingClassifier, saved: dict, path: str) -> None:
    """Copy a checkpoint's weights into the classifier built from its model_config: all of them ("model"), or the
    adapters and head onto the base model ("lora")."""
    if "model" in saved:
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as e:
            raise InputError(f"{path}: its weights do not fit the classifier of its model_config: "
                             f"{' '.join(str(e).split())}") from None
        return
    base = saved["model_config"]["pretrained_model_path"]
    trained_on, now = (sizes(model_args) for model_args in (saved["model_args"], asdict(model.llama.config)))
    if trained_on != now:
        raise InputError(f"{path}: its LoRA adapters were trained on a model of sizes {trained_on}, "
                         f"but {base} now has {now}")
    digest = base_digest(model)
    if saved["base_digest"] != digest:
        raise InputError(f"{path}: its LoRA adapters were trained on other base weights than those {base} "
                         f"now holds (weights sha256 {saved['base_digest'][:12]}…, now {digest[:12]}…): put "
                         "back the base model they were trained on")
    try:
        load_lora_state_dict(model, saved["lora"], "classifier_head.")
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None
