"""SkillPolicyNet: shapes, recurrent-state resets at episode ends only, skill conditioning."""

import numpy as np
import pytest
import torch

from mmotif.contract import observation_spec
from mmotif.models.layers import NATIVE_MAX_CHANNELS, ONEDNN_MIN_ROWS, num_parameters
from mmotif.models.message import MessageEncoder
from mmotif.models.network import CropEncoder, SkillPolicyNet, distinct_rows, local_sizes, mask_state, paper_sizes

K = 5
CROP = (12, 12)


def random_obs(lead, seed=0, num_skills=K, crop=CROP):
    """Random observations following the contract, with leading dims `lead`."""
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for key, (shape, dtype) in observation_spec(num_skills, crop).items():
        full = (*lead, *shape)
        if key == "crop_chars":
            obs[key] = torch.randint(32, 128, full, generator=g, dtype=torch.uint8)
        elif key == "crop_colors":
            obs[key] = torch.randint(0, 16, full, generator=g, dtype=torch.uint8)
        elif key == "message":
            m = torch.randint(32, 127, full, generator=g, dtype=torch.uint8)
            m[..., 40:] = 0  # zero padded
            obs[key] = m
        elif key == "blstats":
            b = torch.rand(full, generator=g)
            skill = torch.randint(0, num_skills, lead, generator=g)
            b[..., -num_skills:] = torch.nn.functional.one_hot(skill, num_skills).float()
            obs[key] = b
        else:
            obs[key] = torch.zeros(full, dtype=torch.from_numpy(np.zeros((), dtype)).dtype)
    return obs


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SkillPolicyNet(K, crop=CROP, sizes=local_sizes()).eval()


def test_param_counts():
    counts = {}
    for name, sizes in (("paper", paper_sizes()), ("local", local_sizes())):
        n = SkillPolicyNet(K, crop=CROP, sizes=sizes)
        counts[name] = num_parameters(n)
        parts = {k: num_parameters(m) for k, m in n.named_children()}
        print(f"\n{name}: {counts[name]:,} parameters {parts}")
    assert 2.5e6 < counts["paper"] < 3.3e6  # paper's CDGPT5 network: ~2.94M
    assert counts["local"] < 0.5e6


def test_forward_shapes(net):
    T, B = 6, 3
    logits, values, state = net(random_obs((T, B)), net.initial_state(B), torch.zeros(T, B, dtype=torch.bool))
    assert logits.shape == (T, B, 28) and values.shape == (T, B) and state.shape == (B, net.hidden_size)
    _, _, state3 = net(random_obs((T, B)), net.initial_state(B).unsqueeze(0))
    assert state3.shape == (1, B, net.hidden_size)


def test_act_shapes_and_consistency(net):
    B = 4
    obs = random_obs((B,), seed=1)
    state = net.initial_state(B)
    action, logp, value, new_state = net.act(obs, state)
    assert action.shape == (B,) and action.dtype == torch.int64
    assert logp.shape == (B,) and value.shape == (B,) and new_state.shape == (B, net.hidden_size)
    assert ((action >= 0) & (action < 28)).all() and (logp <= 0).all()
    with torch.no_grad():  # act's outputs are inference tensors
        logits, values, state_f = net({k: v.unsqueeze(0) for k, v in obs.items()}, state)
    expected_logp = torch.log_softmax(logits[0], -1).gather(1, action[:, None])[:, 0]
    torch.testing.assert_close(logp, expected_logp)
    torch.testing.assert_close(value, values[0])
    torch.testing.assert_close(new_state, state_f)
    greedy, *_ = net.act(obs, state, greedy=True)
    assert torch.equal(greedy, logits[0].argmax(-1))


def test_split_call_equals_one_call(net):
    T, B, split = 10, 3, 4
    obs = random_obs((T, B), seed=2)
    dones = torch.zeros(T, B, dtype=torch.bool)
    dones[1, 0] = True
    dones[split - 1, 1] = True  # an episode ends exactly at the split
    dones[7, 2] = True
    h0 = torch.randn(B, net.hidden_size)
    with torch.no_grad():
        logits, values, state = net(obs, h0, dones)
        first = net({k: v[:split] for k, v in obs.items()}, h0, dones[:split])
        second = net({k: v[split:] for k, v in obs.items()}, first[2], dones[split:])
    torch.testing.assert_close(torch.cat([first[0], second[0]]), logits)
    torch.testing.assert_close(torch.cat([first[1], second[1]]), values)
    torch.testing.assert_close(second[2], state)
    # the carried state is already reset for env 1, whose episode ended at the split
    assert torch.all(first[2][1] == 0) and not torch.all(first[2][0] == 0)


def test_state_resets_only_at_dones(net):
    T, B = 8, 2
    obs = random_obs((T, B), seed=3)
    h0 = torch.randn(B, net.hidden_size)
    dones = torch.zeros(T, B, dtype=torch.bool)
    dones[3, 0] = True  # env 0's episode ends after step 3
    with torch.no_grad():
        logits, values, _ = net(obs, h0, dones)
        # from step 4 on, env 0 behaves as a fresh episode started from zero state
        fresh = net({k: v[4:] for k, v in obs.items()}, net.initial_state(B))
        torch.testing.assert_close(logits[4:, 0], fresh[0][:, 0])
        torch.testing.assert_close(values[4:, 0], fresh[1][:, 0])
        # before the reset, and for env 1 throughout, the initial state matters
        no_reset = net(obs, h0)
        torch.testing.assert_close(logits[:4], no_reset[0][:4])
        torch.testing.assert_close(logits[:, 1], no_reset[0][:, 1])
        assert not torch.allclose(logits[4:, 0], no_reset[0][4:, 0])


def test_skill_switch_does_not_reset_state(net):
    T, B = 6, 1
    obs = random_obs((T, B), seed=4)
    obs["blstats"][..., -K:] = 0
    obs["blstats"][:3, :, -K] = 1.0  # skill 0 for 3 steps
    obs["blstats"][3:, :, -K + 2] = 1.0  # then skill 2
    h0 = torch.randn(B, net.hidden_size)
    with torch.no_grad():
        logits, _, _ = net(obs, h0, torch.zeros(T, B, dtype=torch.bool))
        fresh = net({k: v[3:] for k, v in obs.items()}, net.initial_state(B))
    assert not torch.allclose(logits[3:], fresh[0])  # memory carried across the switch


def test_skill_one_hot_changes_output(net):
    B = 2
    obs = random_obs((1, B), seed=5)
    obs["blstats"][..., -K:] = 0
    other = {k: v.clone() for k, v in obs.items()}
    obs["blstats"][..., -K] = 1.0  # skill 0
    other["blstats"][..., -K + 1] = 1.0  # skill 1, everything else identical
    with torch.no_grad():
        a = net(obs, net.initial_state(B))
        b = net(other, net.initial_state(B))
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_mask_state_layouts():
    s = torch.ones(3, 4)
    out = mask_state(s, torch.tensor([False, True, False]))
    assert out[1].abs().sum() == 0 and out[0].sum() == 4
    s3 = torch.full((1, 3, 4), float("nan"))
    out3 = mask_state(s3, torch.tensor([True, False, True]))
    assert torch.all(out3[0, 0] == 0) and torch.isnan(out3[0, 1]).all()


def test_init_orthogonal_zero_bias():
    n = SkillPolicyNet(K, crop=CROP, sizes=local_sizes())
    assert torch.all(n.actor.bias == 0) and torch.all(n.critic.bias == 0)
    assert torch.all(n.core.bias_ih_l0 == 0) and torch.all(n.core.bias_hh_l0 == 0)
    w = n.core.weight_hh_l0[: n.hidden_size]  # reset-gate block: square orthogonal
    torch.testing.assert_close(w @ w.T, torch.eye(n.hidden_size), atol=1e-5, rtol=0)
    w = n.actor.weight  # (28, H): orthonormal rows
    torch.testing.assert_close(w @ w.T, torch.eye(28), atol=1e-5, rtol=0)


def test_other_crop_and_size_override():
    n = SkillPolicyNet(3, crop=(9, 15), sizes=local_sizes(), core_hidden=32)
    logits, values, state = n(random_obs((2, 2), num_skills=3, crop=(9, 15)), n.initial_state(2))
    assert logits.shape == (2, 2, 28) and state.shape == (2, 32)


# ------------------------------------------------------- exact optimisations vs reference
def like_a_rollout(obs, seed=0):
    """(T, B) observations made to repeat as in a rollout: messages mostly empty or one of a
    few texts; a crop unchanged from the step before in about half the steps (the hero did
    not move)."""
    obs = with_repeated_messages(obs, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for t in range(1, obs["message"].shape[0]):
        stayed = torch.rand(obs["message"].shape[1], generator=g) < 0.5
        for key in ("crop_chars", "crop_colors"):
            obs[key][t, stayed] = obs[key][t - 1, stayed]
    return obs


def with_repeated_messages(obs, seed=0):
    """Messages as in a rollout: mostly empty, a few distinct texts repeated across steps."""
    g = torch.Generator().manual_seed(seed)
    lead = obs["message"].shape[:-1]
    pool = torch.zeros(4, obs["message"].shape[-1], dtype=torch.uint8)
    for i, text in enumerate((b"It's a wall.", b"You see here a scroll.", b"You hear some noises.")):
        pool[i + 1, :len(text)] = torch.tensor(list(text), dtype=torch.uint8)
    pick = torch.multinomial(torch.tensor([0.6, 0.2, 0.1, 0.1]), int(np.prod(lead)), replacement=True, generator=g)
    return {**obs, "message": pool[pick].reshape(obs["message"].shape)}


def test_distinct_rows_rebuild_every_row():
    rows = with_repeated_messages(random_obs((7, 5)))["message"].reshape(35, -1)
    distinct, inverse = distinct_rows(rows)
    assert distinct.dtype == torch.uint8 and distinct.shape[0] <= 4
    assert torch.equal(distinct[inverse], rows)
    odd = rows[:, :253]  # not a whole number of int64 words: the plain path
    distinct, inverse = distinct_rows(odd)
    assert torch.equal(distinct[inverse], odd)
    shifted = rows.reshape(-1)[3:3 + 34 * 256].view(34, 256)  # storage not 8-byte aligned
    distinct, inverse = distinct_rows(shifted)
    assert torch.equal(distinct[inverse], shifted)


def forward_and_grads(net, obs, h0, dones):
    net.zero_grad(set_to_none=True)
    logits, values, state = net(obs, h0, dones)
    (logits.square().mean() + values.mean() + state.sum()).backward()
    return (logits, values, state), {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("sizes", [local_sizes(), paper_sizes()], ids=["local", "paper"])
def test_distinct_inputs_same_outputs_and_gradients(sizes):
    torch.manual_seed(1)
    net = SkillPolicyNet(K, crop=CROP, sizes=sizes).train()
    T, B = 9, 6
    obs = like_a_rollout(random_obs((T, B), seed=6), seed=6)
    dones = torch.zeros(T, B, dtype=torch.bool)
    dones[4, 2] = True
    h0 = torch.randn(B, net.hidden_size)
    net.set_shortcuts(False)
    reference, ref_grads = forward_and_grads(net, obs, h0, dones)
    net.set_shortcuts(True)
    fast, grads = forward_and_grads(net, obs, h0, dones)
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for name, g in ref_grads.items():  # sums taken in another order: error relative to the tensor's scale
        assert (grads[name] - g).abs().max() <= 1e-5 * g.abs().max() + 1e-8, name


def test_acting_caches_same_actions_and_follow_new_weights():
    torch.manual_seed(2)
    net = SkillPolicyNet(K, crop=CROP, sizes=local_sizes()).eval()
    other = SkillPolicyNet(K, crop=CROP, sizes=local_sizes()).state_dict()
    rollout = like_a_rollout(random_obs((6, 8), seed=7), seed=7)
    steps = [{k: v[t] for k, v in rollout.items()} for t in range(6)]
    state = net.initial_state(8)

    def act_all(cache: bool):
        net.set_shortcuts(cache, ("cache_messages", "cache_crops"))
        return [net.act(obs, state, greedy=True) for obs in steps]

    for weights in (None, other):  # the second round must not reuse the first weights' encodings
        if weights is not None:
            net.load_state_dict(weights)
        reference = act_all(cache=False)
        for cached, ref in zip(act_all(cache=True), reference):
            assert torch.equal(cached[0], ref[0])
            for a, b in zip(cached[1:], ref[1:]):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert net._message_cache._store and net._crop_cache._store, "the caches were used"


@pytest.mark.parametrize("rows", [1, 3, 8, 15, 16, 40])
@pytest.mark.parametrize("sizes", [local_sizes(), paper_sizes()], ids=["local", "paper"])
def test_small_no_grad_batches_use_other_kernels_for_the_same_numbers(rows, sizes):
    """Below ONEDNN_MIN_ROWS a no-grad convolution at most NATIVE_MAX_CHANNELS wide runs
    PyTorch's own CPU kernels: the same encodings as with gradients on (oneDNN), and the
    process-wide switch is put back. Wider convolutions (the paper's) keep oneDNN."""
    torch.manual_seed(rows)
    message = torch.randint(0, 256, (rows, 256), dtype=torch.uint8)
    message[:, 50:] = 0
    chars = torch.randint(0, 128, (rows, 12, 12), dtype=torch.uint8)
    colors = torch.randint(0, 16, (rows, 12, 12), dtype=torch.uint8)
    encoders = [(MessageEncoder(32, emb_dim=sizes.message_embed, channels=sizes.message_channels), (message,)),
                (CropEncoder((12, 12), sizes), (chars, colors))]
    for encoder, inputs in encoders:
        seen = []
        encoder.conv[0].register_forward_hook(lambda *_: seen.append(torch.backends.mkldnn.enabled))
        reference = encoder(*inputs).detach()
        with torch.inference_mode():
            fast = encoder(*inputs)
        torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
        assert torch.backends.mkldnn.enabled
        widest = sizes.message_channels if isinstance(encoder, MessageEncoder) else max(sizes.crop_channels)
        narrow = widest <= NATIVE_MAX_CHANNELS
        assert seen[0] and seen[1] == (rows >= ONEDNN_MIN_ROWS or not narrow)
