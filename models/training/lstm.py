"""An LSTM over the window of recent feature rows: last hidden state → one linear layer → logit of P(up)."""

from __future__ import annotations

from typing import Unpack

import torch
from torch import nn

from models.training.torch_training import SequenceOptions, TorchSequenceModel


class LSTMNetwork(nn.Module):
    """Windows (batch, window, n_features) → logits (batch,)."""

    def __init__(self, n_features: int, hidden_size: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(windows)
        return self.head(hidden[-1]).squeeze(-1)


class LSTMModel(TorchSequenceModel):
    """A small LSTM (hidden 32, one layer by default), calibrated on validation data."""

    name = "lstm"

    def __init__(
        self,
        window: int = 60,
        hidden_size: int = 32,
        num_layers: int = 1,
        **options: Unpack[SequenceOptions],
    ) -> None:
        super().__init__(window, **options)
        self.hidden_size = hidden_size
        self.num_layers = num_layers

    def architecture(self) -> dict[str, int]:
        return {"hidden_size": self.hidden_size, "num_layers": self.num_layers}

    def build_network(self, n_features: int) -> nn.Module:
        return LSTMNetwork(n_features, self.hidden_size, self.num_layers)
