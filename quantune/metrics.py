"""Fidelity and accuracy metrics for comparing a quantized model with its float original.

Without labels, the honest question is "does the quantized model still say what the
float model said?", so most metrics here compare two sets of outputs on the same inputs:

- classifiers: top-1 / top-k agreement and the mean KL divergence of the softmaxes;
- embedding models: mean cosine similarity and the overlap of nearest-neighbour lists
  (does retrieval over the quantized embeddings find the same neighbours?).

With labels, :func:`top1_accuracy` is the plain accuracy. Every function takes tensors
whose first dimension is the sample and returns a Python float; the per-sample forms
(:func:`topk_hits`, :func:`cosine_similarities`, :func:`top1_correct`) return the ``[N]``
values those means are taken over, for paired comparisons of two models on the same inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from quantune.errors import UserInputError


def _check_pair(reference: torch.Tensor, candidate: torch.Tensor, what: str) -> None:
    if reference.shape != candidate.shape:
        raise UserInputError(
            f"{what}: reference and candidate outputs differ in shape "
            f"({list(reference.shape)} vs {list(candidate.shape)}); evaluate both models on "
            "the same inputs."
        )
    if reference.dim() != 2 or reference.shape[0] == 0:
        raise UserInputError(f"{what}: expected a non-empty [samples, features] tensor, got {list(reference.shape)}.")


def topk_agreement(reference: torch.Tensor, candidate: torch.Tensor, k: int = 1) -> float:
    """Fraction of samples whose reference top-1 class is in the candidate's top ``k``.

    With ``k=1`` this is plain argmax agreement. This is the usual "top-5 agreement" of
    quantization papers: the float model's answer survives among the quantized model's
    five best guesses.

    Args:
        reference: float model logits, ``[N, C]``.
        candidate: quantized model logits, ``[N, C]``.
        k: how many of the candidate's best classes count.
    """
    return float(topk_hits(reference, candidate, k).float().mean())


def topk_hits(reference: torch.Tensor, candidate: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Per sample (``[N]`` bool): the reference top-1 class is in the candidate's top ``k``
    (:func:`topk_agreement` is its mean)."""
    _check_pair(reference, candidate, "topk_agreement")
    if not 1 <= k <= reference.shape[1]:
        raise UserInputError(f"k must be in [1, {reference.shape[1]}], got {k}.")
    ref_top1 = reference.argmax(dim=1, keepdim=True)
    cand_topk = candidate.topk(k, dim=1).indices
    return (cand_topk == ref_top1).any(dim=1)


def mean_kl_divergence(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Mean over samples of KL(softmax(reference) || softmax(candidate)), in nats.

    Computed from log-softmax in float64 so that near-identical outputs give ~0 rather
    than rounding noise (and never a negative value).
    """
    _check_pair(reference, candidate, "mean_kl_divergence")
    log_p = F.log_softmax(reference.double(), dim=1)
    log_q = F.log_softmax(candidate.double(), dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
    return float(kl.clamp_min(0.0).mean())


def mean_cosine_similarity(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Mean cosine similarity between matching rows of two embedding matrices."""
    return float(cosine_similarities(reference, candidate).mean())


def cosine_similarities(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """Per sample (``[N]`` float64): cosine similarity of matching rows."""
    _check_pair(reference, candidate, "mean_cosine_similarity")
    cos = F.cosine_similarity(reference.double(), candidate.double(), dim=1, eps=1e-12)
    # Identical rows may give 1 + 1 ulp; clamp so "FP32 vs itself" reads exactly 1.0.
    return cos.clamp(-1.0, 1.0)


def nearest_neighbours(embeddings: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[N, k]`` of each row's ``k`` most cosine-similar other rows.

    A row is never its own neighbour. Ties are broken by the lower index (stable sort),
    so the same embeddings always give the same lists.
    """
    if not 1 <= k < embeddings.shape[0]:
        raise UserInputError(f"k must be in [1, {embeddings.shape[0] - 1}] for {embeddings.shape[0]} rows, got {k}.")
    e = F.normalize(embeddings.double(), dim=1, eps=1e-12)
    sim = e @ e.T
    sim.fill_diagonal_(float("-inf"))
    return sim.argsort(dim=1, descending=True, stable=True)[:, :k]


def neighbour_overlap(reference: torch.Tensor, candidate: torch.Tensor, k: int = 10) -> float:
    """Mean fraction of each sample's reference top-``k`` neighbours that the candidate keeps.

    Retrieval agreement: for every sample, the ``k`` nearest other samples are found
    under the reference embeddings and under the candidate embeddings; the score is
    ``|ref ∩ cand| / k`` averaged over samples (1.0 = retrieval unchanged).
    """
    _check_pair(reference, candidate, "neighbour_overlap")
    ref_nn = nearest_neighbours(reference, k)
    cand_nn = nearest_neighbours(candidate, k)
    # [N, k, 1] == [N, 1, k] -> membership of each reference neighbour in the candidate list.
    hits = (ref_nn.unsqueeze(2) == cand_nn.unsqueeze(1)).any(dim=2)
    return float(hits.float().mean())


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose argmax class equals the label."""
    return float(top1_correct(logits, labels).float().mean())


def top1_correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sample (``[N]`` bool): the argmax class equals the label."""
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0] or labels.numel() == 0:
        raise UserInputError(
            f"top1_accuracy needs logits [N, C] and labels [N]; got {list(logits.shape)} and {list(labels.shape)}."
        )
    return logits.argmax(dim=1) == labels.to(logits.device)
