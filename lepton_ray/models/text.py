"""Text classifiers over token ids (N, L) int64: a small transformer encoder (teacher or student) and a
bag-of-embeddings student. Every weight that compression acts on is an `nn.Linear` (attention is written
out with its own q/k/v/output projections, not `nn.MultiheadAttention`), so pruning, b-bit QAT and low-rank
factorization apply as they do to vision students, and the ONNX export is plain MatMul/Gemm.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lepton_ray.data.text import PAD_ID


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention; padded positions are never attended to."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.query, self.key, self.value, self.output = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape

        def split(projection: nn.Linear) -> torch.Tensor:
            return projection(tokens).reshape(batch, length, self.heads, self.head_dim).transpose(1, 2)

        scores = split(self.query) @ split(self.key).transpose(-2, -1) / math.sqrt(self.head_dim)
        scores = scores.masked_fill(padding[:, None, None, :], torch.finfo(scores.dtype).min)
        mixed = scores.softmax(dim=-1) @ split(self.value)
        return self.output(mixed.transpose(1, 2).reshape(batch, length, dim))


class EncoderLayer(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm, self.mlp_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.dropout(self.attention(self.attention_norm(tokens), padding))
        return tokens + self.dropout(self.mlp(self.mlp_norm(tokens)))


def masked_mean(tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """Mean over the non-padded positions (an all-padding row gives zeros)."""
    keep = (~padding).unsqueeze(-1).to(tokens.dtype)
    return (tokens * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


class TextTransformer(nn.Module):
    """Token + learned position embeddings, `layers` encoder blocks (named `layers.<i>` for hint losses),
    a final norm, the mean over real tokens, and a linear head."""

    def __init__(self, max_length: int, num_classes: int, vocab_size: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.position = nn.Parameter(torch.zeros(1, max_length, dim))
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, hidden, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        padding = ids == PAD_ID
        tokens = self.embedding(ids) + self.position[:, : ids.shape[1]]
        for layer in self.layers:
            tokens = layer(tokens, padding)
        return self.classifier(masked_mean(self.norm(tokens), padding))


class BagOfEmbeddings(nn.Module):
    """The mean of the real tokens' embeddings, then an MLP: the cheapest student that still reads every word."""

    def __init__(self, max_length: int, num_classes: int, vocab_size: int, dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.classifier = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        padding = ids == PAD_ID
        return self.classifier(masked_mean(self.embedding(ids), padding))
