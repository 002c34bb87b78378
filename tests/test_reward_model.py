"""Reward network shapes, parameter count and init (spec §4.2)."""

from __future__ import annotations

import torch
from torch import nn

from mmotif.contract import DIFFSTATS_LEN, MESSAGE_LEN
from mmotif.models.layers import num_parameters
from mmotif.models.message import MessageEncoder
from mmotif.models.network import SkillPolicyNet, local_sizes
from mmotif.rewards.model import RewardModel

torch.set_num_threads(1)


def test_parameter_count_matches_paper():
    model = RewardModel()
    n = num_parameters(model)
    # Layer shapes of §4.2 give 356,993; the paper rounds to 0.36M.
    assert 340_000 <= n <= 380_000, n
    assert n == 356_993


def test_message_encoder_is_standalone():
    enc = MessageEncoder()
    assert enc.out_dim == 128
    assert enc.flat_dim == 320  # 64 channels x 5 positions for 256 chars
    msg = torch.randint(0, 256, (3, MESSAGE_LEN), dtype=torch.uint8)
    out = enc(msg)
    assert out.shape == (3, 128)
    assert (out >= 0).all()  # ends in ReLU
    assert MessageEncoder(out_dim=64).out_dim == 64


def test_reward_model_shapes_and_dtypes():
    model = RewardModel().eval()
    msg = torch.zeros(4, MESSAGE_LEN, dtype=torch.uint8)
    msg[1, :5] = torch.tensor(list(b"Hello"))
    diff = torch.zeros(4, DIFFSTATS_LEN)
    diff[2, 0] = 1.0
    out = model(msg, diff)
    assert out.shape == (4,) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # the message and the depth change both matter
    assert out[0] != out[1] and out[0] != out[2]
    # rows are independent of the rest of the batch
    torch.testing.assert_close(model(msg[1:2], diff[1:2]), out[1:2])


def test_wrong_shapes_are_refused():
    model = RewardModel()
    try:
        model(torch.zeros(2, 100, dtype=torch.uint8), torch.zeros(2, 5))
    except ValueError as err:
        assert "message" in str(err)
    else:
        raise AssertionError("short message accepted")
    try:
        model(torch.zeros(2, MESSAGE_LEN, dtype=torch.uint8), torch.zeros(2, 4))
    except ValueError as err:
        assert "diffstats" in str(err)
    else:
        raise AssertionError("wrong diffstats accepted")


def test_orthogonal_init_zero_biases_and_padding_row():
    model = RewardModel()
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d)):
            assert torch.count_nonzero(m.bias) == 0
            w = m.weight.reshape(m.weight.shape[0], -1)
            rows, cols = w.shape
            gram = w @ w.T if rows <= cols else w.T @ w
            torch.testing.assert_close(gram, torch.eye(min(rows, cols)), atol=1e-4, rtol=0)
    assert torch.count_nonzero(model.message_encoder.embedding.weight[0]) == 0


def test_init_is_seeded():
    torch.manual_seed(3)
    a = RewardModel()
    torch.manual_seed(3)
    b = RewardModel()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


# The reward-model file format: published versions store `state_dict()` under these names and
# shapes (recorded from a version published before the encoder moved to `mmotif.models`).
PUBLISHED_KEYS = {
    "message_encoder.embedding.weight": (256, 32),
    **{f"message_encoder.conv.{i}.weight": (64, 32 if i == 0 else 64, 7 if i in (0, 3) else 3)
       for i in (0, 3, 6, 8, 10, 12)},
    **{f"message_encoder.conv.{i}.bias": (64,) for i in (0, 3, 6, 8, 10, 12)},
    "message_encoder.fc.0.weight": (128, 320), "message_encoder.fc.0.bias": (128,),
    "diffstats_encoder.0.weight": (128, 5), "diffstats_encoder.0.bias": (128,),
    "diffstats_encoder.2.weight": (128, 128), "diffstats_encoder.2.bias": (128,),
    "trunk.0.weight": (256, 256), "trunk.0.bias": (256,), "trunk.2.weight": (512, 256), "trunk.2.bias": (512,),
    "head.1.weight": (1, 512), "head.1.bias": (1,),
}


def test_state_dict_keys_are_the_published_format():
    sd = RewardModel().state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == PUBLISHED_KEYS
    RewardModel().load_state_dict({k: torch.zeros(shape) for k, shape in PUBLISHED_KEYS.items()})


def test_policy_and_reward_model_share_one_message_encoder_class():
    assert type(RewardModel().message_encoder) is MessageEncoder
    assert type(SkillPolicyNet(2, sizes=local_sizes()).message_encoder) is MessageEncoder
