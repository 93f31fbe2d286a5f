"""Integration tests of the tokenizer: paper preset, round trips, checkpoints, CLI, data-parallel training (gloo, two
CPU processes) and the benchmark.

Exact resume is checked in nbs/03b_tokenizer_train.ipynb."""
import json, logging, os, signal, socket, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np
import pytest
import torch
from conftest import run_cli
from diffusion_reward.core import CheckpointError
from diffusion_reward.data import Episode, save_episode, episode_paths
from diffusion_reward.test_utils import synthetic_episodes
from diffusion_reward.tokenizer import TokenizerConfig, VQModel, Tokenizer, Quantizer, count_params
from diffusion_reward.tokenizer_train import (LPIPS, PatchDiscriminator, train_tokenizer, load_perceptual,
                                              bench_tokenizer, evaluate_tokenizer, prepare_frames)

torch.set_num_threads(1)
ENV = {**os.environ, 'DR_NO_PROGRESS': '1', 'OMP_NUM_THREADS': '1'}


def tiny(**kw): return TokenizerConfig.preset('tiny', **kw)


@pytest.fixture(scope='module')
def eps(): return synthetic_episodes(4, 8, seed=3)


def test_paper_param_count():
    c = count_params(VQModel(TokenizerConfig.preset('paper')), PatchDiscriminator())
    # the reference counts encoder + decoder + codebook + quant_conv + post_quant_conv: 20.5M
    assert abs(c['generator'] / 20.5e6 - 1) < 0.05, c
    assert c['generator'] == c['encoder'] + c['decoder'] + c['codebook'] + c['quant_convs']
    assert c['codebook'] == 1024 * 64 and 2.5e6 < c['discriminator'] < 3e6


def test_paper_one_training_step_cpu(eps, tmp_path):
    cfg = TokenizerConfig.preset('paper', batch_size=2, gan_start=0, init='data', init_frames=4, eval_frames=2)
    s = train_tokenizer(cfg, [e[:3] for e in eps], tmp_path, steps=1, seed=0, device='cpu')
    assert s['step'] == 1 and np.isfinite(s['last_train']['loss'])
    assert {'g_loss', 'd_loss', 'adaptive_weight'} <= set(s['last_train'])  # the GAN path ran
    assert s['params'] == count_params(VQModel(cfg))['generator']


def test_encode_decode_contract(eps):
    tok = Tokenizer(VQModel(tiny()), 'cpu')
    fr = np.stack(eps[:2])  # (2, 8, 64, 64, 3) uint8
    codes = tok.encode(fr)
    assert codes.shape == (2, 8, 8, 8) and codes.dtype == torch.long and int(codes.max()) < tok.num_codes
    assert tok.grid == (8, 8)
    x = torch.from_numpy(fr).permute(0, 1, 4, 2, 3).float() / 127.5 - 1  # float channels-first in [-1, 1]
    assert torch.equal(tok.encode(x), codes)
    out = tok.decode(codes)
    assert out.shape == (2, 8, 64, 64, 3) and out.dtype == torch.uint8
    assert torch.equal(tok.decode(codes.numpy()), out)  # numpy in, same frames out
    tok.batch_size = 3  # chunking does not change the codes; the frames at most by one uint8 step, because the
    assert torch.equal(tok.encode(fr), codes)  # convolutions' float rounding depends on the batch size (oneDNN)
    assert (tok.decode(codes).int() - out.int()).abs().max() <= 1
    for bad, msg in [(fr.astype(np.float32), 'channels first'), (x * 255, 'must lie in [-1, 1]'),
                     (fr.astype(np.int32), 'dtype'), (fr[..., :32, :], '(..., 64, 64, 3)'),
                     ([1, 2], 'numpy array or torch tensor')]:
        with pytest.raises(ValueError, match=None) as e: tok.encode(bad)
        assert msg in str(e.value), (msg, str(e.value))
    for bad, msg in [(codes.float(), 'integer'), (codes[..., :7], '(..., 8, 8)'),
                     (codes * 0 - 1, 'must lie in [0, 32)')]:
        with pytest.raises(ValueError) as e: tok.decode(bad)
        assert msg in str(e.value)


def test_quantizer_restarts_dead_codes_and_ema_tracks_data():
    torch.manual_seed(0)
    q = Quantizer(8, 4, restart_after=2)
    z = torch.randn(4, 4, 8, 8) + 3  # the uniform init codes are near 0: all but one code is dead at first
    for _ in range(10): _, idx, _, st = q(z)
    assert st['codes_used'] >= 6  # restarts moved the unused codes onto data
    q.eval(); before = q.embed.clone(); q(z)
    assert torch.equal(before, q.embed)  # no updates in eval mode
    # EMA with decay 0 puts each used code at the mean of its vectors
    q2 = Quantizer(8, 4, decay=0.0, restart_after=0); q2.init_codebook(z.permute(0, 2, 3, 1).reshape(-1, 4), 'data')
    _, idx, _, _ = q2(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4); k = int(idx.flatten()[0])
    assert torch.allclose(q2.embed[k], flat[idx.flatten() == k].mean(0), atol=1e-4)


def test_resume_and_load_refuse_mismatches(eps, tmp_path):
    train_tokenizer(tiny(), eps, tmp_path, steps=2, seed=0)
    with pytest.raises(ValueError, match='already holds a run'): train_tokenizer(tiny(), eps, tmp_path, steps=4)
    with pytest.raises(CheckpointError, match='config differs'):
        train_tokenizer(tiny(beta=0.5), eps, tmp_path, steps=4, resume=True)
    with pytest.raises(CheckpointError, match='training data differ'):
        train_tokenizer(tiny(), synthetic_episodes(4, 8, seed=9), tmp_path, steps=4, resume=True)
    with pytest.raises(CheckpointError, match='no last.pt'):
        train_tokenizer(tiny(), eps, tmp_path / 'new', steps=4, resume=True)
    with pytest.raises(CheckpointError, match='architecture differs'):
        Tokenizer.from_checkpoint(tmp_path / 'best.pt', config=tiny(num_codes=64))
    torch.save({'kind': 'something else'}, tmp_path / 'other.pt')
    with pytest.raises(CheckpointError, match='not a tokenizer checkpoint'):
        Tokenizer.from_checkpoint(tmp_path / 'other.pt')
    tok = Tokenizer.from_checkpoint(tmp_path / 'best.pt', 'cpu', config=tiny(lr=0.1))  # training-only fields may differ
    assert tok.num_codes == 32


def test_checkpoints_are_self_describing(eps, tmp_path):
    s = train_tokenizer(tiny(), eps, tmp_path, steps=3, seed=0)
    for name in ('last.pt', 'best.pt'):
        ck = torch.load(tmp_path / name, weights_only=True)
        assert ck['kind'] == 'diffusion_reward.tokenizer' and ck['config'] == tiny().to_dict()
        assert ck['data']['train_frames'] + ck['data']['test_frames'] == 32 and len(ck['data']['sha1']) == 40
        assert ck['code_version']['torch'] and ck['step'] == 3
    summ = json.loads((tmp_path / 'summary.json').read_text())
    assert {'heldout_psnr', 'perplexity', 'codes_used', 'params', 'seconds'} <= set(summ)
    assert summ['heldout_psnr'] == s['heldout_psnr'] and 1 <= summ['codes_used'] <= 32
    assert list((tmp_path / 'tb').glob('events.out.tfevents.*'))
    held = prepare_frames(eps, seed=0)[1]
    ev = evaluate_tokenizer(Tokenizer.from_checkpoint(tmp_path / 'best.pt', 'cpu').model, held)
    assert abs(ev['psnr'] - summ['heldout_psnr']) < 1e-9


def _write_episodes(root, eps, task='reach-v3'):
    for i, fr in enumerate(eps):
        save_episode(Episode(fr, np.zeros(len(fr) - 1, bool), dict(task=task, policy='expert', domain='metaworld')),
                     Path(root) / task / 'expert' / f'ep{i:06d}.npz')


def test_cli_trains_on_episode_folders(eps, tmp_path):
    _write_episodes(tmp_path / 'data', eps)
    out = tmp_path / 'run'
    args = ['dr_train_tokenizer', str(tmp_path / 'data'), '--preset', 'tiny', '--out', str(out), '--threads', '1',
            '--batch_size', '2', '--gan_start', '-1']
    r = run_cli(args + ['--steps', '4'], env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert 'perceptual (LPIPS) loss OFF' in r.stderr and r.stderr.count('LPIPS) loss OFF') == 1
    s = json.loads((out / 'summary.json').read_text())
    assert s['step'] == 4 and s['config']['batch_size'] == 2 and s['gan'] is False and s['data']['test_episodes'] == 1
    r = run_cli(args + ['--steps', '6', '--resume'], env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / 'summary.json').read_text())['step'] == 6


def _free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def test_ddp_two_gloo_processes_match_one_process(eps, tmp_path):
    "2 processes x batch 2 (gloo, CPU, float32) step as 1 process x batch 4 does; with the GAN on they stay in sync."
    np.savez(tmp_path / 'eps.npz', *eps)
    script = tmp_path / 'ddp.py'
    script.write_text(textwrap.dedent(f'''
        import numpy as np, torch, torch.distributed as dist
        from diffusion_reward.tokenizer import TokenizerConfig
        from diffusion_reward.tokenizer_train import train_tokenizer
        torch.set_num_threads(1)
        dist.init_process_group('gloo')  # one group for both runs (train_tokenizer uses a group it finds)
        z = np.load({str(tmp_path / 'eps.npz')!r})
        eps = [z[k] for k in sorted(z.files, key=lambda k: int(k.split('_')[1]))]
        cfg = TokenizerConfig.preset('tiny', batch_size=2, gan=False, restart_after=0, amp=False)
        train_tokenizer(cfg, eps, {str(tmp_path / 'ddp')!r}, steps=1, seed=0)
        train_tokenizer(TokenizerConfig.preset('tiny', batch_size=2, gan_start=1), eps, {str(tmp_path / 'ddp_gan')!r},
                        steps=3, seed=0)
        dist.destroy_process_group()
    '''))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(_free_port()),
           str(script)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                         start_new_session=True)
    try: out, err = p.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); out, err = p.communicate()
        pytest.fail('torchrun timed out: ' + err[-2000:])
    assert p.returncode == 0, out[-3000:] + err[-3000:]
    assert json.loads((tmp_path / 'ddp' / 'summary.json').read_text())['world_size'] == 2
    assert json.loads((tmp_path / 'ddp_gan' / 'summary.json').read_text())['last_train']['d_loss'] > 0
    train_tokenizer(tiny(batch_size=4, gan=False, restart_after=0, amp=False), eps, tmp_path / 'single', steps=1,
                    seed=0)
    a = torch.load(tmp_path / 'ddp' / 'last.pt', weights_only=True)['model']
    b = torch.load(tmp_path / 'single' / 'last.pt', weights_only=True)['model']
    # one AdamW step moves weights by ~lr = 2e-3: unaveraged gradients or per-process EMA statistics would show up here
    # (later steps are only equal to float noise, which Adam amplifies for near-zero gradients)
    for k in a: assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=0), k
    assert torch.equal(a['quantizer.cluster_size'], b['quantizer.cluster_size'])


def test_lpips_loads_local_weights_in_both_layouts(tmp_path, caplog):
    ref = LPIPS()
    torch.save(ref.state_dict(), tmp_path / 'lpips.pt')  # the lpips package's key layout
    tv = {k.replace('net.slice', 'S'): v for k, v in ref.state_dict().items()}
    tv = {(f"features.{k.split('.')[1]}.{k.split('.')[2]}" if k.startswith('S') else k): v for k, v in tv.items()}
    torch.save(tv, tmp_path / 'tv.pt')  # torchvision vgg16 'features.N.*' keys + lin heads
    a, b = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    for f in ('lpips.pt', 'tv.pt'):
        lp = load_perceptual(tmp_path / f)
        assert torch.allclose(lp(a, b), ref.eval()(a, b), atol=1e-5)
        assert not any(p.requires_grad for p in lp.parameters())
    with caplog.at_level(logging.WARNING):
        assert load_perceptual(tmp_path / 'missing.pt') is None
    assert sum('LPIPS) loss OFF' in r.message for r in caplog.records) == 1


def test_lpips_term_enters_training(eps, tmp_path):
    sd = {k: v.abs() if k.startswith('lin') else v for k, v in LPIPS().state_dict().items()}  # LPIPS heads are >= 0
    torch.save(sd, tmp_path / 'lpips.pt')
    s = train_tokenizer(tiny(lpips_path=str(tmp_path / 'lpips.pt'), gan=False), eps, tmp_path / 'run', steps=2, seed=0)
    assert s['perceptual'] and s['last_train']['perceptual'] > 0


def test_bench_tokenizer_reports_ratio(capsys):
    "Both presets are timed inside this call, for at least min_seconds each, and the ratio is their measured quotient."
    t0 = time.perf_counter()
    b = bench_tokenizer(('tiny', 'small'), 'cpu', batch=8, min_seconds=0.1)
    wall = time.perf_counter() - t0
    for p in ('tiny', 'small'):
        assert b[f'{p}_seconds'] >= 0.1 and b[f'{p}_frames'] > 0 and b[f'{p}_frames'] % 8 == 0
        assert b[f'{p}_encode_fps'] == pytest.approx(b[f'{p}_frames'] / b[f'{p}_seconds'])
    assert b['tiny_seconds'] + b['small_seconds'] <= wall  # timed in this run, one after the other
    ratio = (b['small_frames'] / b['small_seconds']) / (b['tiny_frames'] / b['tiny_seconds'])
    assert b['small_over_tiny'] == pytest.approx(ratio)
    assert f"small_over_tiny={b['small_over_tiny']:.4g}" in capsys.readouterr().out


@pytest.mark.slow
def test_small_preset_on_metaworld_frames(tmp_path):
    "The notebook's MetaWorld result (nbs/03b_tokenizer_train.ipynb): 4.5 minutes of the small preset reach 28 dB."
    root = Path('/tmp/tokdata')
    if not root.exists(): pytest.skip(f'no episodes at {root}: collect them as nbs/03b_tokenizer_train.ipynb shows')
    s = train_tokenizer('small', episode_paths(root), tmp_path, steps=100_000, seed=0, max_seconds=270)
    assert s['heldout_psnr'] >= 28 and s['codes_used_frac'] >= 0.8, s
