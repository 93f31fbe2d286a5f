"Scheduler against brute force: dense per-step matrices, their products and Bayes' rule on a tiny vocabulary."
import itertools
import numpy as np
import pytest
import torch
from diffusion_reward.scheduler import (MaskDiffusionScheduler, alpha_schedule, log_onehot, categorical_kl,
                                        categorical_log_prob, gumbel_sample, LOG_ZERO)

K, T = 4, 5

def vq_alpha1(T, N, att_1=0.99999, att_T=0.000009, ctt_1=0.000009, ctt_T=0.99999):
    "Per-step (a_t, b_t, c_t) of VQ-Diffusion's alpha1 schedule, written out independently of the module."
    att = [att_1 + (att_T - att_1) * i / (T - 1) for i in range(T)]
    ctt = [ctt_1 + (ctt_T - ctt_1) * i / (T - 1) for i in range(T)]
    steps, pa, pc = [], 1.0, 0.0
    for a_cum, c_cum in zip(att, ctt):
        a = a_cum / pa
        c = 1 - (1 - c_cum) / (1 - pc)
        steps.append((a, (1 - a - c) / N, c))
        pa, pc = a_cum, c_cum
    return steps

def one_step(a, b, c, N):
    "Q[i, j] = q(x_t = j | x_{t-1} = i), [MASK] = N."
    Q = np.zeros((N + 1, N + 1))
    for i in range(N):
        for j in range(N): Q[i, j] = b + (a if i == j else 0)
        Q[i, N] = c
    Q[N, N] = 1
    return Q

@pytest.fixture(scope='module')
def brute():
    "Dense matrices: M[(s, t)] = q(x_t | x_s) for -1 <= s <= t <= T-1 (s = -1: clean)."
    steps = [one_step(*abc, K) for abc in vq_alpha1(T, K)]
    M = {}
    for s in range(-1, T):
        P = np.eye(K + 1)
        M[(s, s)] = P
        for t in range(s + 1, T):
            P = P @ steps[t]
            M[(s, t)] = P
    return M

def test_rows_are_distributions(brute):
    for P in brute.values(): np.testing.assert_allclose(P.sum(1), 1, atol=1e-12); assert (P >= 0).all()

def test_schedule_endpoints():
    s = alpha_schedule(100, 1024)
    assert s['keep'][1] == pytest.approx(0.99999) and s['keep'][100] == pytest.approx(9e-6)
    assert s['mask'][1] == pytest.approx(9e-6) and s['mask'][100] == pytest.approx(0.99999)
    with pytest.raises(ValueError): alpha_schedule(1, 16)

def test_forward_matches_matrix_products(brute):
    sch = MaskDiffusionScheduler(K, T)
    eye = torch.log(torch.eye(K + 1)).clamp(min=LOG_ZERO)
    for (s, t), P in brute.items():
        got = sch.forward_log_probs(eye, s, t).exp().double().numpy()
        np.testing.assert_allclose(got, P, atol=2e-6, err_msg=f'{s}->{t}')
    # q(x_t | x_start) for every code
    for t in range(T):
        got = sch.q_probs(torch.arange(K), t).exp().double().numpy()
        np.testing.assert_allclose(got, brute[(-1, t)][:K], atol=2e-6)

@pytest.mark.parametrize('t,t_prev', [(t, s) for t in range(T) for s in range(-1, t)])
def test_posterior_any_stride_matches_bayes(brute, t, t_prev):
    "q(x_{t'} | x_t, x0) by Bayes' rule on dense matrices, averaged over random x0 distributions; also one-hot x0."
    sch = MaskDiffusionScheduler(K, T)
    rng = np.random.default_rng(t * 10 + t_prev + 1)
    p0 = np.concatenate([rng.dirichlet(np.ones(K), size=3), np.eye(K)])  # (7, K)
    A, B, C = brute[(-1, t_prev)], brute[(t_prev, t)], brute[(-1, t)]
    for xt in range(K + 1):
        want = np.zeros((len(p0), K + 1))
        for n, p in enumerate(p0):
            for x0 in range(K):
                if p[x0] == 0: continue
                joint = A[x0] * B[:, xt]                    # q(x_t' | x0) q(x_t | x_t')
                want[n] += p[x0] * joint / C[x0, xt]         # / q(x_t | x0)
        log_p0 = torch.tensor(np.log(np.maximum(p0, 1e-30)), dtype=torch.float32).clamp(min=LOG_ZERO)
        got = sch.posterior(log_p0[:, None], torch.full((len(p0), 1), xt), t, t_prev).exp()[:, 0].double().numpy()
        np.testing.assert_allclose(got, want, atol=5e-6, err_msg=f't={t} t_prev={t_prev} x_t={xt}')

def test_posterior_with_batched_steps(brute):
    "Per-sample (t, t_prev) tensors give the same result as scalar calls."
    sch = MaskDiffusionScheduler(K, T)
    g = torch.Generator().manual_seed(0)
    pairs = [(t, s) for t in range(T) for s in range(-1, t)]
    t = torch.tensor([p[0] for p in pairs]); tp = torch.tensor([p[1] for p in pairs])
    log_x0 = torch.log_softmax(torch.randn(len(pairs), 3, K, generator=g), -1)
    x_t = torch.randint(0, K + 1, (len(pairs), 3), generator=g)
    batched = sch.posterior(log_x0, x_t, t, tp)
    for i, (a, b) in enumerate(pairs):
        torch.testing.assert_close(batched[i:i + 1], sch.posterior(log_x0[i:i + 1], x_t[i:i + 1], a, b))

def test_strided_chain_of_posteriors_is_consistent(brute):
    "Marginalising a one-step posterior over the intermediate state equals the two-step posterior (given x0)."
    sch = MaskDiffusionScheduler(K, T)
    for x0, xt in itertools.product(range(K), range(K + 1)):
        lx0 = log_onehot(torch.tensor([[x0]]), K)
        two = sch.posterior(lx0, torch.tensor([[xt]]), 4, 2).exp()[0, 0]
        mid = sch.posterior(lx0, torch.tensor([[xt]]), 4, 3).exp()[0, 0]
        via = sum(mid[m] * sch.posterior(lx0, torch.tensor([[m]]), 3, 2).exp()[0, 0] for m in range(K + 1) if mid[m] > 1e-12)
        torch.testing.assert_close(two, via, atol=1e-5, rtol=1e-4)

def test_q_sample_frequencies(brute):
    sch = MaskDiffusionScheduler(K, T)
    g = torch.Generator().manual_seed(0)
    for t in (0, 2, 4):
        x = sch.q_sample(torch.full((60000,), 1), t, g)
        freq = torch.bincount(x, minlength=K + 1).double().numpy() / 60000
        np.testing.assert_allclose(freq, brute[(-1, t)][1], atol=0.01)

def test_gumbel_and_kl_helpers():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.1, 0.6, 0.3])
    freq = torch.bincount(gumbel_sample(p.log().expand(50000, 3), 1.0, g), minlength=3).double() / 50000
    torch.testing.assert_close(freq, p.double(), atol=0.01, rtol=0)
    assert (gumbel_sample(p.log().expand(100, 3), 0.0) == 1).all()
    q = torch.tensor([0.5, 0.25, 0.25])
    want = float((q * (q / p).log()).sum())
    assert categorical_kl(q.log(), p.log()).item() == pytest.approx(want, rel=1e-5)
    assert categorical_log_prob(torch.tensor(2), p.log()).item() == pytest.approx(np.log(0.3), rel=1e-6)

def test_timesteps_and_oracle_chain():
    sch = MaskDiffusionScheduler(1024, 100)
    assert sch.timesteps(10) == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9, 0]
    assert len(sch.step_pairs(10)) == 11 and sch.step_pairs(10)[-1] == (0, -1)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 1024, (3, 64), generator=g)
    x = sch.all_masked((3, 64))
    for t, tp in sch.step_pairs(10):
        x, _ = sch.step(log_onehot(x0, 1024), x, t, tp, generator=g)
        if tp >= 0:  # the chain only ever unmasks toward x0 or keeps [MASK]
            assert ((x == x0) | (x == 1024)).all()
    assert torch.equal(x, x0)

def test_vb_terms_zero_for_perfect_prediction():
    sch = MaskDiffusionScheduler(K, T)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, K, (T, 16), generator=g); t = torch.arange(T)
    x_t = sch.q_sample(x0, t, g)
    vb, aux = sch.vb_terms(log_onehot(x0, K), x0, x_t, t)
    assert vb.abs().max() < 1e-3 and aux.abs().max() < 1e-3
    wrong = log_onehot((x0 + 1) % K, K)
    vb_w, _ = sch.vb_terms(wrong, x0, x_t, t)
    assert (vb_w > 1).all()

def test_bad_steps_raise():
    sch = MaskDiffusionScheduler(K, T)
    with pytest.raises(ValueError, match='t_from <= t_to'): sch.posterior(torch.zeros(1, 1, K), torch.zeros(1, 1, dtype=torch.long), 2, 3)
    with pytest.raises(ValueError, match='codes only'): sch.posterior(torch.zeros(1, 1, K + 1), torch.zeros(1, 1, dtype=torch.long), 2, 1)
    with pytest.raises(ValueError, match='stride'): sch.timesteps(0)
