"""A small Transformer encoder over the window of recent feature rows, read out at the newest (scored) row.

The last block lets only the newest row attend over the window (keys and values come from every row), which
spares the queries and feed-forward of all other rows there: the Transformer dominates the inference cost.
Reading out one row instead of averaging all of them also keeps every row's score independent of the batch
size in onnxruntime, whose ReduceMean sums in a batch-dependent order.
"""

from __future__ import annotations

import math
from typing import Unpack

import torch
from torch import nn

from models.training.torch_training import SequenceOptions, TorchSequenceModel


class EncoderBlock(nn.Module):
    """Pre-norm multi-head self-attention and feed-forward, each with a residual connection."""

    def __init__(self, d_model: int, n_heads: int, feedforward: int, newest_row_only: bool) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_size = d_model // n_heads
        self.newest_row_only = newest_row_only
        self.attention_norm = nn.LayerNorm(d_model)
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.attention_out = nn.Linear(d_model, d_model)
        self.feedforward_norm = nn.LayerNorm(d_model)
        self.feedforward = nn.Sequential(nn.Linear(d_model, feedforward), nn.GELU(), nn.Linear(feedforward, d_model))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        batch, length, d_model = rows.shape
        normed = self.attention_norm(rows)
        if self.newest_row_only:
            rows, query_rows = rows[:, -1:], normed[:, -1:]
        else:
            query_rows = normed
        queries = self.query(query_rows).reshape(batch, -1, self.n_heads, self.head_size).transpose(1, 2)
        keys, values = (
            part.reshape(batch, length, self.n_heads, self.head_size).transpose(1, 2)
            for part in self.key_value(normed).chunk(2, dim=-1)
        )
        scores = (queries @ keys.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_size))
        attended = (torch.softmax(scores, dim=-1) @ values).transpose(1, 2).reshape(batch, -1, d_model)
        rows = rows + self.attention_out(attended)
        return rows + self.feedforward(self.feedforward_norm(rows))


class TransformerNetwork(nn.Module):
    """Windows (batch, window, n_features) → logits (batch,), with a learned position embedding."""

    def __init__(
        self, n_features: int, window: int, d_model: int, n_heads: int, n_layers: int, feedforward: int
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be at least 1")
        self.input_projection = nn.Linear(n_features, d_model)
        self.position = nn.Parameter(torch.randn(window, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            EncoderBlock(d_model, n_heads, feedforward, newest_row_only=index == n_layers - 1)
            for index in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        rows = self.input_projection(windows) + self.position
        for block in self.blocks:
            rows = block(rows)
        return self.head(self.final_norm(rows[:, -1])).squeeze(-1)


class TransformerModel(TorchSequenceModel):
    """A small encoder (d_model 32, 2 heads, 2 layers, feed-forward 64), calibrated on validation data."""

    name = "transformer"

    def __init__(
        self,
        window: int = 30,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 2,
        feedforward: int = 64,
        **options: Unpack[SequenceOptions],
    ) -> None:
        super().__init__(window, **options)
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.feedforward = feedforward

    def architecture(self) -> dict[str, int]:
        return {
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "n_layers": self.n_layers,
            "feedforward": self.feedforward,
        }

    def build_network(self, n_features: int) -> nn.Module:
        return TransformerNetwork(n_features, self.window, self.d_model, self.n_heads, self.n_layers, self.feedforward)
