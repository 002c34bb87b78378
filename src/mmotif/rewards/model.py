"""Per-skill reward network (spec §4.2) over the char-CNN message encoder of `mmotif.models.message`.

The message encoder reads the NLE message buffer as raw character codes (uint8, 256 long,
zero padded; no tokenizer) and the reward model adds a small MLP over `diffstats` (the sign of
the depth change in entry 0, entries 1-4 zero). About 0.36M parameters in all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from mmotif.contract import DIFFSTATS_LEN, MESSAGE_LEN, Caption, encode_reward_input
from mmotif.models.layers import orthogonal_init_
from mmotif.models.message import MessageEncoder


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


# --------------------------------------------------------------------------- inputs
def encode_captions(captions: Sequence[Caption]) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (message uint8 (N, 256), diffstats float32 (N, 5)), the reward-model inputs
    (`mmotif.contract.encode_reward_input`, the env's own encoding)."""
    n = len(captions)
    msg = np.zeros((n, MESSAGE_LEN), dtype=np.uint8)
    diff = np.zeros((n, DIFFSTATS_LEN), dtype=np.float32)
    for i, c in enumerate(captions):
        encode_reward_input(c.message, c.depth_change, out=(msg[i], diff[i]))
    return torch.from_numpy(msg), torch.from_numpy(diff)
