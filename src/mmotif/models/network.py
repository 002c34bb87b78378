"""The skill-conditioned recurrent policy (spec §7): one network for every skill.

    crop_chars, crop_colors (H, W) --embed 256 chars + 16 colours--> conv net --> FC --> ELU
    blstats (30 + K, skill one-hot last) --> MLP (ELU) ++ raw blstats            (CDGPT5 style)
    message (256 char codes) --> char-CNN (`models.message.MessageEncoder`, shared with the
                                 reward model, spec §4.2)
                  concat --> GRU (one layer) --> actor Linear(H -> 28 logits)
                                             --> critic Linear(H -> 1), one critic for all skills

Deviation from CDGPT5, recorded (spec §15.4 allows it): the image branch reads an embedding
of the tty characters and colours of the crop around the hero instead of a 72x72 RGB
rendering of the same crop. The rest follows §7.2-§7.3.

Recurrent state convention (shared with `learners.appo`, `actors` and `evaluation`):
- `dones[t]` (T, B) means the episode ENDED after step t.
- The state is set to zero before step t + 1 wherever `dones[t]`: only at episode ends,
  never at skill switches (§7.3, §8.3).
- `core_state` passed to `forward` is the state entering step 0 (already zeroed if the step
  before the rollout ended an episode). The state `forward` returns is the state entering the
  step after the last one, i.e. already zeroed where `dones[-1]`, so it can be carried into
  the next call (or stored as the next rollout's initial state) unchanged.
- `act` does not know whether the step it chooses will end the episode, so it returns the raw
  state; the caller applies `mask_state(state, done)` after stepping the env.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from mmotif.contract import DEFAULT_CROP, MESSAGE_LEN, blstats_dim
from mmotif.models.layers import cpu_conv_kernels_for, orthogonal_init_, widest_conv
from mmotif.models.message import MessageEncoder

NUM_ACTIONS = 28  # spec §9.3
NUM_CHARS = 256
NUM_COLORS = 16
ENCODER_KEYS = ("crop_chars", "crop_colors", "blstats", "message")  # what the network reads
EXACT_SHORTCUTS = ("distinct_messages", "distinct_crops", "cache_messages", "cache_crops")  # see SkillPolicyNet


@dataclass(frozen=True)
class NetSizes:
    """Layer sizes of `SkillPolicyNet`. Defaults are the paper-scale preset."""

    char_embed: int = 32  # embedding of the 256 tty character codes
    color_embed: int = 8  # embedding of the 16 tty colours
    crop_channels: tuple[int, ...] = (32, 64, 128)  # conv k3: stride 1 then stride 2 each
    crop_hidden: int = 512  # FC after the conv net (CDGPT5: 512)
    blstats_hidden: int = 128  # MLP width (CDGPT5: 128)
    blstats_layers: int = 4  # Linear(in->h) + 3 x Linear(h->h), all ELU (spec §7.2)
    message_dim: int = 128  # char-CNN output (spec §4.2: 128)
    message_embed: int = 32
    message_channels: int = 64
    core_hidden: int = 512  # GRU hidden size (paper: 512)
    num_actions: int = NUM_ACTIONS


def paper_sizes() -> NetSizes:
    """Paper scale: GRU 512, 512-d crop features, 128-d blstats MLP, 128-d message CNN."""
    return NetSizes()


def local_sizes() -> NetSizes:
    """Small enough to learn on 2 CPU cores: GRU 128, narrow encoders (< 0.5M parameters)."""
    return NetSizes(char_embed=16, color_embed=4, crop_channels=(16, 32, 32), crop_hidden=128,
                    blstats_hidden=64, message_dim=64, message_embed=16, message_channels=32,
                    core_hidden=128)


def default_message_encoder(sizes: NetSizes) -> nn.Module:
    """The reward model's char-CNN (spec §4.2) at the requested width."""
    return MessageEncoder(sizes.message_dim, msg_len=MESSAGE_LEN, emb_dim=sizes.message_embed,
                          channels=sizes.message_channels)


def mask_state(state: Tensor, dones: Tensor) -> Tensor:
    """Zero the recurrent state of the envs whose episode just ended.

    state: (B, H) or (1, B, H); dones: (B,) bool. `where`, not a multiply, so that a NaN in
    a finished episode's state cannot leak into the next episode.
    """
    keep = ~dones.to(device=state.device, dtype=torch.bool)
    return torch.where(keep.view(*([1] * (state.dim() - 2)), -1, 1), state, torch.zeros_like(state))


def distinct_rows(rows: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows of a 2-D tensor and, for every row, the index of its copy among them.

    Rows of bytes whose length divides by 8 are compared as int64 words, 8x fewer columns
    for the lexicographic sort; the bytes, hence the result, are the same.
    """
    rows = rows.contiguous()
    if rows.dtype == torch.uint8 and rows.shape[1] % 8 == 0 and rows.storage_offset() % 8 == 0:
        distinct, inverse = torch.unique(rows.view(torch.int64), dim=0, return_inverse=True)
        return distinct.view(torch.uint8), inverse
    return torch.unique(rows, dim=0, return_inverse=True)


def encode_distinct(encode: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
    """`encode(rows)` for a row-wise encoder, run once per distinct row and gathered back.

    Most steps of a batch show the empty or a repeated message (a rollout of 528 steps holds
    ~55 distinct ones), and a hero who did not move sees the same crop (~200 distinct). The
    gather's backward sums the gradients of the copies of a row before the encoder's
    backward: the same sum, taken earlier.
    """
    distinct, inverse = distinct_rows(rows)
    if distinct.shape[0] == rows.shape[0]:
        return encode(rows)
    return encode(distinct).index_select(0, inverse)


class EncodingCache:
    """Encodings of rows seen before, valid while the encoder's weights are unchanged.

    For acting (inference mode): a rollout step shows ~6 distinct messages in 16 envs, but a
    whole rollout only ~55, most of them seen in earlier steps; crops repeat while a hero
    stands still. The weights are identified by each parameter's identity, storage and
    version counter (bumped by every in-place change: `load_state_dict`, an optimiser step),
    so new weights empty the cache.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._weights: tuple | None = None
        self._store: dict[bytes, Tensor] = {}

    def _sync_weights(self, module: nn.Module) -> None:
        weights = tuple((id(p), p.data_ptr(), p._version) for p in module.parameters())
        if weights != self._weights or len(self._store) > self.capacity:
            self._weights, self._store = weights, {}

    def encode(self, module: nn.Module, encode: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
        """`encode(rows)`, where `encode` depends on no weights but `module`'s."""
        self._sync_weights(module)
        if rows.shape[0] == 0:
            return encode(rows)
        distinct, inverse = distinct_rows(rows)
        keys = [row.tobytes() for row in distinct.cpu().numpy()]
        missing = [i for i, key in enumerate(keys) if key not in self._store]
        if missing:
            for i, encoded in zip(missing, encode(distinct[missing])):
                self._store[keys[i]] = encoded
        return torch.stack([self._store[key] for key in keys]).index_select(0, inverse)


class CropEncoder(nn.Module):
    """Char + colour embeddings of the (H, W) crop -> conv (ELU) -> FC (ELU)."""

    def __init__(self, crop: tuple[int, int], sizes: NetSizes) -> None:
        super().__init__()
        self.char_embed = nn.Embedding(NUM_CHARS, sizes.char_embed)
        self.color_embed = nn.Embedding(NUM_COLORS, sizes.color_embed)
        layers: list[nn.Module] = []
        in_ch = sizes.char_embed + sizes.color_embed
        for i, out_ch in enumerate(sizes.crop_channels):
            layers += [nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1 if i == 0 else 2, padding=1), nn.ELU()]
            in_ch = out_ch
        self.conv = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, sizes.char_embed + sizes.color_embed, *crop)).numel()
        self.fc = nn.Sequential(nn.Linear(flat, sizes.crop_hidden), nn.ELU())
        self.out_dim = sizes.crop_hidden
        self._widest_conv = widest_conv(self.conv)

    def forward(self, chars: Tensor, colors: Tensor) -> Tensor:
        x = torch.cat([self.char_embed(chars.long()), self.color_embed(colors.long())], dim=-1)  # (N,H,W,E)
        with cpu_conv_kernels_for(x, self._widest_conv):
            x = self.conv(x.permute(0, 3, 1, 2))
        return self.fc(x.flatten(1))


class BlstatsEncoder(nn.Module):
    """MLP over the scaled blstats (+ skill one-hot), concatenated with the raw input (CDGPT5)."""

    def __init__(self, in_dim: int, sizes: NetSizes) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(sizes.blstats_layers):
            layers += [nn.Linear(d, sizes.blstats_hidden), nn.ELU()]
            d = sizes.blstats_hidden
        self.mlp = nn.Sequential(*layers)
        self.out_dim = sizes.blstats_hidden + in_dim

    def forward(self, blstats: Tensor) -> Tensor:
        return torch.cat([self.mlp(blstats), blstats], dim=-1)


class SkillPolicyNet(nn.Module):
    """Skill-conditioned GRU actor-critic. See the module docstring for the state convention.

    Args:
        num_skills: K; blstats has 30 + K entries, the skill one-hot last.
        crop: (H, W) of crop_chars / crop_colors.
        sizes: a `NetSizes` (default `paper_sizes()`); keyword overrides replace its fields.
        message_encoder: factory `NetSizes -> nn.Module` mapping (N, 256) uint8 char codes to
            (N, out_dim) floats row by row, deterministically (no dropout: the shortcuts below
            encode a repeated row once), with an `out_dim` attribute. Default: the reward
            model's char-CNN (`mmotif.models.message.MessageEncoder`).

    Exact shortcuts, each an attribute (True by default; False is the reference path, kept
    for tests and benchmarks):
    - `distinct_messages`, `distinct_crops`: encode each distinct message (crop) of a batch
      once (`encode_distinct`);
    - `cache_messages`, `cache_crops`: in inference mode (`act`) and eval mode, keep the
      encodings of messages (crops) seen before under the same weights (`EncodingCache`).
    """

    def __init__(self, num_skills: int, crop: tuple[int, int] = DEFAULT_CROP, sizes: NetSizes | None = None,
                 message_encoder: Callable[[NetSizes], nn.Module] | None = None, **size_overrides) -> None:
        super().__init__()
        sizes = dataclasses.replace(sizes or paper_sizes(), **size_overrides)
        self.sizes = sizes
        self.num_skills = num_skills
        self.crop = tuple(crop)
        self.hidden_size = sizes.core_hidden
        self.crop_encoder = CropEncoder(self.crop, sizes)
        self.blstats_encoder = BlstatsEncoder(blstats_dim(num_skills), sizes)
        self.message_encoder = (message_encoder or default_message_encoder)(sizes)
        core_in = self.crop_encoder.out_dim + self.blstats_encoder.out_dim + self.message_encoder.out_dim
        self.core = nn.GRU(core_in, sizes.core_hidden, num_layers=1)
        self.actor = nn.Linear(sizes.core_hidden, sizes.num_actions)
        self.critic = nn.Linear(sizes.core_hidden, 1)
        self.distinct_messages = self.distinct_crops = True
        self.cache_messages = self.cache_crops = True
        self._message_cache, self._crop_cache = EncodingCache(), EncodingCache()
        self._init_weights()

    def _init_weights(self) -> None:
        """Orthogonal (gain 1) weights and zero biases; per gate for the GRU matrices."""
        orthogonal_init_(self, gain=1.0)
        for name, p in self.core.named_parameters():
            if name.startswith("weight"):
                for gate in p.data.chunk(3, dim=0):  # reset, update, new
                    nn.init.orthogonal_(gate, gain=1.0)
            else:
                nn.init.zeros_(p)

    def set_shortcuts(self, on: bool, names: tuple[str, ...] = EXACT_SHORTCUTS) -> None:
        """Switch exact shortcuts on or off (off: the reference computation)."""
        for name in names:
            if name not in EXACT_SHORTCUTS:
                raise ValueError(f"unknown shortcut {name!r}; known: {EXACT_SHORTCUTS}")
            setattr(self, name, on)

    # ------------------------------------------------------------------ state
    def initial_state(self, batch: int, device: torch.device | str | None = None) -> Tensor:
        """Zero recurrent state, (B, H)."""
        return torch.zeros(batch, self.hidden_size, device=device)

    # ----------------------------------------------------------------- encode
    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        """(N, ...) observations -> (N, core_in) features."""
        return torch.cat([
            self._encode_crops(obs["crop_chars"], obs["crop_colors"]),
            self.blstats_encoder(obs["blstats"].float()),
            self._encode_rows(self.message_encoder, self.message_encoder, obs["message"],
                              self.distinct_messages, self.cache_messages, self._message_cache),
        ], dim=-1)

    def _encode_crops(self, chars: Tensor, colors: Tensor) -> Tensor:
        as_bytes = chars.dtype == colors.dtype == torch.uint8
        if not (as_bytes and (self.distinct_crops or self.cache_crops)):
            return self.crop_encoder(chars, colors)
        n, cells = chars.shape[0], self.crop[0] * self.crop[1]

        def encode(rows: Tensor) -> Tensor:
            return self.crop_encoder(rows[:, :cells].view(-1, *self.crop), rows[:, cells:].view(-1, *self.crop))

        rows = torch.cat([chars.reshape(n, cells), colors.reshape(n, cells)], dim=1)
        return self._encode_rows(self.crop_encoder, encode, rows, self.distinct_crops, self.cache_crops,
                                 self._crop_cache)

    def _encode_rows(self, module: nn.Module, encode: Callable[[Tensor], Tensor], rows: Tensor, distinct: bool,
                     cache: bool, store: EncodingCache) -> Tensor:
        if cache and not self.training and torch.is_inference_mode_enabled():
            return store.encode(module, encode, rows)
        if distinct:
            return encode_distinct(encode, rows)
        return encode(rows)

    def _run_core(self, x: Tensor, h: Tensor, dones: Tensor | None) -> tuple[Tensor, Tensor]:
        """GRU over (T, B, F) from h (1, B, H), zeroing the state after episode ends.

        The sequence is cut only at steps that follow an episode end, so a rollout without
        one is a single fused GRU call.
        """
        T = x.shape[0]
        if dones is None:
            return self.core(x, h)
        dones = dones.to(device=x.device, dtype=torch.bool)
        cuts = (dones[:-1].any(dim=1).nonzero().flatten() + 1).tolist()  # steps after an end
        outs, start = [], 0
        for end in cuts + [T]:
            out, h = self.core(x[start:end], h)
            outs.append(out)
            h = mask_state(h, dones[end - 1])
            start = end
        return torch.cat(outs, dim=0), h

    # ---------------------------------------------------------------- forward
    def forward(self, obs: Mapping[str, Tensor], core_state: Tensor,
                done_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Unroll over a (T, B) batch.

        obs: dict of (T, B, ...) tensors (only ENCODER_KEYS are read); core_state: (B, H) or
        (1, B, H), the state entering step 0; done_mask: (T, B) bool, episode ended after step t.
        Returns logits (T, B, A), values (T, B) and the state entering step T, in the layout
        of `core_state`.
        """
        T, B = obs["blstats"].shape[:2]
        flat = {k: obs[k].reshape(T * B, *obs[k].shape[2:]) for k in ENCODER_KEYS}
        x = self.encode(flat).view(T, B, -1)
        h = core_state if core_state.dim() == 3 else core_state.unsqueeze(0)
        out, h = self._run_core(x, h.to(x.dtype), done_mask)
        logits = self.actor(out)
        values = self.critic(out).squeeze(-1)
        return logits, values, (h if core_state.dim() == 3 else h.squeeze(0))

    @torch.inference_mode()
    def act(self, obs: Mapping[str, Tensor], state: Tensor,
            greedy: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One step for B envs, for rollout inference.

        obs: dict of (B, ...) tensors; state: (B, H) or (1, B, H).
        Returns action (B,) int64, its log-prob (B,), value (B,), new state (raw: apply
        `mask_state(state, done)` once the env step tells which episodes ended). The outputs
        are inference tensors: clone them before using them in autograd.
        """
        logits, values, new_state = self.forward({k: obs[k].unsqueeze(0) for k in ENCODER_KEYS}, state)
        logp_all = torch.log_softmax(logits[0].float(), dim=-1)
        if greedy:
            action = logp_all.argmax(dim=-1)
        else:
            action = torch.multinomial(logp_all.exp(), 1).squeeze(1)
        logp = logp_all.gather(1, action.unsqueeze(1)).squeeze(1)
        return action, logp, values[0], new_state
