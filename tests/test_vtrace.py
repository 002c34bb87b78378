"""V-trace against a slow, literal implementation of the IMPALA definition (float64 numpy)."""

import numpy as np
import pytest
import torch

from mmotif.learners.appo import vtrace


def reference_vtrace(mu_logp, pi_logp, rewards, values, bootstrap, dones, gamma, rho_bar, c_bar):
    """vs_s = V_s + sum_{t>=s} (prod_{i=s}^{t-1} g_i c_i) delta_t;  A_s = rho_s (r_s + g_s vs_{s+1} - V_s)."""
    T, B = rewards.shape
    ratio = np.exp(pi_logp - mu_logp)
    rho = np.minimum(rho_bar, ratio)
    c = np.minimum(c_bar, ratio)
    g = gamma * (1.0 - dones)
    v_ext = np.concatenate([values, bootstrap[None]], axis=0)  # V_0 .. V_T
    vs = np.zeros((T, B))
    adv = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            total = v_ext[s, b]
            for t in range(s, T):
                weight = 1.0
                for i in range(s, t):
                    weight *= g[i, b] * c[i, b]
                delta = rho[t, b] * (rewards[t, b] + g[t, b] * v_ext[t + 1, b] - v_ext[t, b])
                total += weight * delta
            vs[s, b] = total
        vs_ext = np.concatenate([vs[:, b], bootstrap[b:b + 1]])
        for s in range(T):
            adv[s, b] = rho[s, b] * (rewards[s, b] + g[s, b] * vs_ext[s + 1] - v_ext[s, b])
    return vs, adv


def random_inputs(seed, T=9, B=5, done_p=0.2, spread=1.0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(T, B)) - 1.5
    pi = mu + spread * rng.normal(size=(T, B))
    rewards = rng.normal(size=(T, B))
    values = rng.normal(size=(T, B))
    bootstrap = rng.normal(size=B)
    dones = (rng.random((T, B)) < done_p).astype(np.float64)
    dones[T // 2, 0] = 1.0  # at least one episode end inside the rollout
    dones[-1, 1] = 1.0  # and one at the very end (bootstrap must be ignored there)
    return mu, pi, rewards, values, bootstrap, dones


def run_torch(mu, pi, rewards, values, bootstrap, dones, gamma, rho_bar, c_bar):
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)
    vs, adv = vtrace(t(mu), t(pi), t(rewards), t(values), t(bootstrap), torch.as_tensor(dones > 0),
                     gamma, rho_bar, c_bar)
    return vs.numpy(), adv.numpy()


@pytest.mark.parametrize("rho_bar,c_bar", [(1.0, 1.0), (2.0, 0.5), (0.7, 1.3), (float("inf"), float("inf"))])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vtrace_matches_definition(seed, rho_bar, c_bar):
    args = random_inputs(seed)
    gamma = 0.9
    vs, adv = run_torch(*args, gamma, rho_bar, c_bar)
    vs_ref, adv_ref = reference_vtrace(*args, gamma, rho_bar, c_bar)
    np.testing.assert_allclose(vs, vs_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(adv, adv_ref, rtol=1e-10, atol=1e-10)


def test_on_policy_vtrace_is_n_step_return():
    mu, _, rewards, values, bootstrap, dones = random_inputs(3, T=12, B=4, done_p=0.15)
    gamma = 0.97
    vs, adv = run_torch(mu, mu, rewards, values, bootstrap, dones, gamma, 1.0, 1.0)
    T, B = rewards.shape
    returns = np.zeros((T, B))
    for b in range(B):
        for s in range(T):
            ret, discount = 0.0, 1.0
            for t in range(s, T):
                ret += discount * rewards[t, b]
                discount *= gamma * (1.0 - dones[t, b])
            returns[s, b] = ret + discount * bootstrap[b]
    np.testing.assert_allclose(vs, returns, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(adv, returns - values, rtol=1e-10, atol=1e-10)


def test_vtrace_float32_and_no_grad():
    mu, pi, rewards, values, bootstrap, dones = (torch.as_tensor(a, dtype=torch.float32) for a in random_inputs(4))
    values.requires_grad_(True)
    vs, adv = vtrace(mu, pi, rewards, values, bootstrap, dones.bool(), 0.99)
    assert vs.dtype == torch.float32 and vs.shape == rewards.shape and adv.shape == rewards.shape
    assert not vs.requires_grad and not adv.requires_grad
