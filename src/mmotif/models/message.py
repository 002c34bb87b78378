"""The char-CNN message encoder (spec §4.2), shared by the skill policy and the reward model.

It reads the NLE message buffer as raw character codes (uint8, 256 long, zero padded; no
tokenizer). Its submodule names (`embedding`, `conv`, `fc`) are part of the reward-model file
format: published reward models store their weights under `message_encoder.<these names>`.
"""

from __future__ import annotations

import torch
from torch import nn

from mmotif.contract import MESSAGE_LEN
from mmotif.models.layers import cpu_conv_kernels_for, widest_conv


def _conv_out_len(length: int, kernel: int) -> int:
    return length - kernel + 1  # stride 1, no padding


def _pool_out_len(length: int, kernel: int = 3) -> int:
    return length // kernel  # MaxPool1d(k, stride k), floor mode


class MessageEncoder(nn.Module):
    """Char-CNN over the current message (the E3B / TorchBeast `lt_cnn` message model).

    Embedding(256, 32, padding_idx=0) -> Conv1d(32->64, k7) -> ReLU -> MaxPool(3)
    -> Conv1d(64->64, k7) -> ReLU -> MaxPool(3) -> 4x [Conv1d(64->64, k3) -> ReLU] -> MaxPool(3)
    -> flatten (64 x 5 = 320 for 256 chars) -> Linear(320 -> out_dim) -> ReLU.

    Input: `message` integer tensor (B, msg_len) of char codes 0..255 (uint8 is fine).
    Output: float tensor (B, out_dim).
    """

    def __init__(self, out_dim: int = 128, *, msg_len: int = MESSAGE_LEN, emb_dim: int = 32,
                 channels: int = 64) -> None:
        super().__init__()
        self.msg_len = msg_len
        self.out_dim = out_dim
        self.embedding = nn.Embedding(256, emb_dim, padding_idx=0)
        self.conv = nn.Sequential(
            nn.Conv1d(emb_dim, channels, kernel_size=7), nn.ReLU(), nn.MaxPool1d(3, 3),
            nn.Conv1d(channels, channels, kernel_size=7), nn.ReLU(), nn.MaxPool1d(3, 3),
            nn.Conv1d(channels, channels, kernel_size=3), nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3), nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3), nn.ReLU(),
            nn.Conv1d(channels, channels, kernel_size=3), nn.ReLU(),
            nn.MaxPool1d(3, 3),
        )
        length = _pool_out_len(_conv_out_len(msg_len, 7))
        length = _pool_out_len(_conv_out_len(length, 7))
        for _ in range(4):
            length = _conv_out_len(length, 3)
        length = _pool_out_len(length)
        if length < 1:
            raise ValueError(f"msg_len={msg_len} is too short for the message CNN")
        self.flat_dim = channels * length  # 320 for the paper's 256-char message
        self.fc = nn.Sequential(nn.Linear(self.flat_dim, out_dim), nn.ReLU())
        self._widest_conv = widest_conv(self.conv)

    def forward(self, message: torch.Tensor) -> torch.Tensor:
        if message.dim() != 2 or message.shape[1] != self.msg_len:
            raise ValueError(f"message must be (B, {self.msg_len}), got {tuple(message.shape)}")
        x = self.embedding(message.long())  # (B, L, E)
        with cpu_conv_kernels_for(x, self._widest_conv):
            x = self.conv(x.transpose(1, 2))  # (B, C, L')
        return self.fc(x.flatten(1))
