"""Scheduler checks that nbs/04_scheduler.ipynb does not make: batched steps, the consistency of strided posteriors,
the KL against its formula, the bound for a wrong prediction and the argument errors. The brute-force comparison with
dense matrices and Bayes' rule (forward process and posteriors for every stride) lives in the notebook."""
import itertools
import numpy as np
import pytest
import torch
from diffusion_reward.scheduler import MaskDiffusionScheduler, log_onehot, categorical_kl

K, T = 4, 5

def test_posterior_with_batched_steps():
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

def test_strided_chain_of_posteriors_is_consistent():
    "Marginalising a one-step posterior over the intermediate state equals the two-step posterior (given x0)."
    sch = MaskDiffusionScheduler(K, T)
    for x0, xt in itertools.product(range(K), range(K + 1)):
        lx0 = log_onehot(torch.tensor([[x0]]), K)
        two = sch.posterior(lx0, torch.tensor([[xt]]), 4, 2).exp()[0, 0]
        mid = sch.posterior(lx0, torch.tensor([[xt]]), 4, 3).exp()[0, 0]
        via = sum(mid[m] * sch.posterior(lx0, torch.tensor([[m]]), 3, 2).exp()[0, 0]
                  for m in range(K + 1) if mid[m] > 1e-12)
        torch.testing.assert_close(two, via, atol=1e-5, rtol=1e-4)

def test_kl_matches_its_formula():
    p, q = torch.tensor([0.1, 0.6, 0.3]), torch.tensor([0.5, 0.25, 0.25])
    want = float((q * (q / p).log()).sum())
    assert categorical_kl(q.log(), p.log()).item() == pytest.approx(want, rel=1e-5)

def test_vb_terms_are_large_for_a_wrong_prediction():
    sch = MaskDiffusionScheduler(K, T)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, K, (T, 16), generator=g); t = torch.arange(T)
    x_t = sch.q_sample(x0, t, g)
    vb_w, _ = sch.vb_terms(log_onehot((x0 + 1) % K, K), x0, x_t, t)
    assert (vb_w > 1).all()

def test_bad_arguments_raise():
    sch = MaskDiffusionScheduler(K, T)
    with pytest.raises(ValueError, match='codes only'):
        sch.posterior(torch.zeros(1, 1, K + 1), torch.zeros(1, 1, dtype=torch.long), 2, 1)
    with pytest.raises(ValueError, match='stride'): sch.timesteps(0)
