"""Per-skill reward network (spec §4.2) and the char-CNN message encoder it shares with the policy.

The message encoder reads the NLE message buffer as raw character codes (uint8, 256 long,
zero padded; no tokenizer) and the reward model adds a small MLP over `diffstats` (the sign of
the depth change in entry 0, entries 1-4 zero). About 0.36M parameters in all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mmotif.contract import DIFFSTATS_LEN, MESSAGE_LEN, Caption


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

    def forward(self, message: torch.Tensor) -> torch.Tensor:
        if message.dim() != 2 or message.shape[1] != self.msg_len:
            raise ValueError(f"message must be (B, {self.msg_len}), got {tuple(message.shape)}")
        x = self.embedding(message.long())  # (B, L, E)
        x = self.conv(x.transpose(1, 2))  # (B, C, L')
        return self.fc(x.flatten(1))


def orthogonal_init_(module: nn.Module, gain: float = 1.0) -> None:
    """Orthogonal weights (gain 1) and zero biases for every Linear/Conv1d (spec §4.2).

    The embedding keeps PyTorch's default N(0, 1) init (its padding row stays zero).
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class RewardModel(nn.Module):
    """One skill's reward r_phi(message, diffstats) -> scalar (spec §4.2).

    message branch (128) + diffstats MLP 5 -> 128 -> ReLU -> 128 -> ReLU, concatenated (256)
    -> Linear(256 -> 256) -> ReLU -> Linear(256 -> 512) -> ReLU -> Linear(512 -> 1).

    Inputs: `message` uint8 (B, 256), `diffstats` float (B, 5). Output: float (B,).
    """

    def __init__(self, *, msg_len: int = MESSAGE_LEN, diffstats_dim: int = DIFFSTATS_LEN,
                 hidden: int = 128) -> None:
        super().__init__()
        self.msg_len = msg_len
        self.diffstats_dim = diffstats_dim
        self.message_encoder = MessageEncoder(hidden, msg_len=msg_len)
        self.diffstats_encoder = nn.Sequential(
            nn.Linear(diffstats_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        )
        joint = self.message_encoder.out_dim + hidden
        self.trunk = nn.Sequential(nn.Linear(joint, 256), nn.ReLU(), nn.Linear(256, 512))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(512, 1))
        orthogonal_init_(self, gain=1.0)

    def forward(self, message: torch.Tensor, diffstats: torch.Tensor) -> torch.Tensor:
        if diffstats.dim() != 2 or diffstats.shape[1] != self.diffstats_dim:
            raise ValueError(f"diffstats must be (B, {self.diffstats_dim}), got {tuple(diffstats.shape)}")
        m = self.message_encoder(message)
        d = self.diffstats_encoder(diffstats.to(m.dtype))
        return self.head(self.trunk(torch.cat([m, d], dim=1))).squeeze(1)


def num_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- inputs
def encode_message(text: str, length: int = MESSAGE_LEN) -> np.ndarray:
    """Message text -> uint8 char codes, zero padded / truncated to `length`.

    Non-ASCII characters become '?' (NLE messages are ASCII; this keeps dataset strings and
    the env's message buffer on the same alphabet).
    """
    codes = np.zeros(length, dtype=np.uint8)
    raw = text.encode("ascii", errors="replace")[:length]
    codes[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return codes


def diffstats_of(depth_change: int) -> np.ndarray:
    """[sign(depth change), 0, 0, 0, 0] as float32 (spec §4.1)."""
    d = np.zeros(DIFFSTATS_LEN, dtype=np.float32)
    d[0] = float(np.sign(depth_change))
    return d


def encode_captions(captions: Sequence[Caption]) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (message uint8 (N, 256), diffstats float32 (N, 5)), the reward-model inputs."""
    n = len(captions)
    msg = np.zeros((n, MESSAGE_LEN), dtype=np.uint8)
    diff = np.zeros((n, DIFFSTATS_LEN), dtype=np.float32)
    for i, c in enumerate(captions):
        msg[i] = encode_message(c.message)
        diff[i, 0] = float(np.sign(c.depth_change))
    return torch.from_numpy(msg), torch.from_numpy(diff)
