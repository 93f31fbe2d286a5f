"Video model: KV cache equivalence, strided chain, toy training, exact resume, DDP (gloo, 2 processes), CLI, errors."
import json, os, subprocess, sys, textwrap
from pathlib import Path
import numpy as np
import pytest
import torch
from diffusion_reward.core import CheckpointError, DataError, load_checkpoint, save_checkpoint
from diffusion_reward.video_model import (VideoModelConfig, VideoTrainConfig, VideoDiffusion, Denoiser, TokenWindows,
                                          TimestepSampler, toy_token_videos, train_video_model, evaluate_video_model,
                                          bench_video_model, tokenize_episodes, train_video_from_episodes,
                                          next_frame_panel)

torch.set_num_threads(1)
TINY = VideoModelConfig.preset('tiny')

def quick(**kw):
    base = dict(steps=20, batch_size=4, lr=2e-3, warmup_steps=5, log_every=5, eval_every=10, eval_windows=16, ckpt_every=10)
    return VideoTrainConfig.preset('small', **{**base, **kw})

@pytest.mark.parametrize('over', [dict(conditioning='cross'), dict(conditioning='cross', cross_rel_bias=True),
                                  dict(conditioning='cross', reference_condition=True), dict(conditioning='fused')])
def test_kv_cache_gives_same_outputs_and_samples(over):
    torch.manual_seed(0)
    m = VideoDiffusion(VideoModelConfig.preset('tiny', **over)).eval()
    cond = torch.randint(0, 16, (5, 2, 8, 8))
    x_t, t = torch.randint(0, 17, (5, 64)), torch.randint(0, 10, (5,))
    a = m.predict_x0(x_t, t, cond)
    b = m.predict_x0(x_t, t, enc=m.encode_condition(cond, kv=True))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    s1 = m.sample(cond, stride=2, generator=torch.Generator().manual_seed(3), use_cache=True)
    s2 = m.sample(cond, stride=2, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(s1, s2)

def test_chain_visits_paper_steps_and_returns_distributions():
    torch.manual_seed(0)
    m = VideoDiffusion(VideoModelConfig.preset('tiny', num_timesteps=100)).eval()
    seen = []
    h = m.denoiser.register_forward_hook(lambda mod, i, o: seen.append(int(i[1][0])))
    chain = m.sample_chain(torch.randint(0, 16, (3, 2, 8, 8)), stride=10, generator=torch.Generator().manual_seed(0))
    h.remove()
    assert seen == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9, 0]
    assert [c.t for c in chain] == seen and chain[-1].t_prev == -1
    for c in chain:
        assert c.log_x0.shape == (3, 64, 16) and c.log_p_prev.shape == (3, 64, 17)
        torch.testing.assert_close(c.log_x0.exp().sum(-1), torch.ones(3, 64))
        torch.testing.assert_close(c.log_p_prev.exp().sum(-1), torch.ones(3, 64))
    for a, b in zip(chain, chain[1:]): assert torch.equal(a.x_prev, b.x_t)
    assert (chain[0].x_t == 16).all() and (chain[-1].x_prev < 16).all()

def test_paper_preset_size():
    n = sum(p.numel() for p in Denoiser(VideoModelConfig.preset('paper')).parameters())
    assert 17.5e6 < n < 18.5e6  # the reference denoiser has 18.0M

def test_loss_falls_and_model_predicts_next_frame(tmp_path):
    vids = toy_token_videos(24, 16, seed=0)
    cfg = quick(steps=300, batch_size=16, warmup_steps=20, log_every=50, eval_every=0, eval_windows=64)
    s = train_video_model(vids, tmp_path, TINY, cfg, seed=0, tensorboard=False)
    assert s['train_loss_last'] < 0.2 * s['train_loss_first']
    assert s['eval_last']['bound'] < 0.5 * s['eval_first']['bound']
    m = VideoDiffusion.from_checkpoint(tmp_path/'video_model.pt')
    held = TokenWindows([v for v in toy_token_videos(4, 16, seed=99)], 2, 8, 16)  # unseen episodes
    cond, target = held.get(torch.arange(len(held)))
    pred = m.sample(cond, stride=3, noise_scale=0.0)
    assert (pred == target).float().mean() > 0.8
    assert json.loads((tmp_path/'summary.json').read_text())['steps'] == 300

def test_exact_resume_with_importance_sampling(tmp_path):
    "40 steps vs 20 + 20: importance sampling switches on mid-run (T=10, batch 8), state must carry over exactly."
    vids = toy_token_videos(8, 12, seed=1)
    mc = VideoModelConfig.preset('tiny', conditioning='cross', cross_rel_bias=True)
    cfg = quick(steps=40, batch_size=8, ema_every=3)
    train_video_model(vids, tmp_path/'a', mc, cfg, seed=2, tensorboard=False)
    train_video_model(vids, tmp_path/'b', mc, cfg.replace(steps=20), seed=2, tensorboard=False)
    train_video_model(vids, tmp_path/'b', mc, cfg, seed=2, resume=True, tensorboard=True)
    a, b = load_checkpoint(tmp_path/'a'/'checkpoint.pt'), load_checkpoint(tmp_path/'b'/'checkpoint.pt')
    assert a['timestep_sampler']['count'].min() > 10  # importance sampling was on
    for n in a['model']: assert torch.equal(a['model'][n], b['model'][n]), n
    for n in a['ema']['model']: assert torch.equal(a['ema']['model'][n], b['ema']['model'][n]), n
    assert torch.equal(a['timestep_sampler']['history'], b['timestep_sampler']['history'])
    assert any((tmp_path/'b'/'tb').iterdir())

def test_resume_refuses_other_settings(tmp_path):
    vids = toy_token_videos(4, 8)
    train_video_model(vids, tmp_path, TINY, quick(steps=2), tensorboard=False)
    with pytest.raises(CheckpointError, match='resume=True'): train_video_model(vids, tmp_path, TINY, quick(steps=4), tensorboard=False)
    with pytest.raises(CheckpointError, match='training config differs'):
        train_video_model(vids, tmp_path, TINY, quick(steps=4, lr=1e-4), resume=True, tensorboard=False)
    with pytest.raises(CheckpointError, match='model config differs'):
        train_video_model(vids, tmp_path, TINY.replace(num_layers=3), quick(steps=4), resume=True, tensorboard=False)

def test_bad_inputs_name_the_problem(tmp_path):
    m = VideoDiffusion(TINY)
    with pytest.raises(ValueError, match=r'\(B, 2, 8, 8\)'): m.sample(torch.zeros(2, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match='integer'): m.sample(torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r'\[0, 16\)'): m.sample(torch.full((2, 2, 8, 8), 16))
    with pytest.raises(DataError, match='ep3.npz'): TokenWindows([np.zeros((5, 8, 7), int)], 2, 8, 16, names=['ep3.npz'])
    with pytest.raises(DataError, match='needs'): TokenWindows([np.zeros((2, 8, 8), int)], 2, 8, 16)
    save_checkpoint({'kind': 'something_else'}, tmp_path/'x.pt')
    with pytest.raises(CheckpointError, match='not a video-model checkpoint'): VideoDiffusion.from_checkpoint(tmp_path/'x.pt')
    with pytest.raises(CheckpointError, match='does not exist'): VideoDiffusion.from_checkpoint(tmp_path/'missing.pt')
    with pytest.raises(ValueError, match='conditioning'): VideoModelConfig(conditioning='concat')

def test_timestep_sampler_state_round_trip():
    s = TimestepSampler(10, min_count=1)
    for _ in range(3): s.update(torch.arange(10), torch.linspace(0, 5, 10))
    s2 = TimestepSampler(10, min_count=1); s2.load_state_dict(s.state_dict())
    torch.testing.assert_close(s.probs(), s2.probs())
    t, pt = s.sample(1000, torch.Generator().manual_seed(0))
    assert (torch.bincount(t, minlength=10)[1:] > 0).all() and pt.min() > 0

def test_bench_reports_both_modes():
    r = bench_video_model('tiny', batch_size=2, stride=1, repeats=1, conditioning='cross')
    assert r['passes_per_s_cache'] > 0 and r['passes_per_s_no_cache'] > 0 and r['calls_per_window'] == 10
    assert r['cache_speedup'] == pytest.approx(r['passes_per_s_cache'] / r['passes_per_s_no_cache'])

def test_ddp_gloo_two_processes(tmp_path):
    "torchrun with 2 CPU processes: training runs, ranks stay in sync, rank 0 writes files, DDP resume works."
    script = tmp_path/'ddp_train.py'
    script.write_text(textwrap.dedent('''
        import sys, torch, torch.distributed as dist
        from pathlib import Path
        torch.set_num_threads(1)
        from diffusion_reward.video_model import VideoModelConfig, VideoTrainConfig, toy_token_videos, train_video_model
        import diffusion_reward.video_model as vm
        out, steps, resume = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == '1'
        cfg = VideoTrainConfig.preset('small', steps=steps, batch_size=4, warmup_steps=2, log_every=2, eval_every=0,
                                      eval_windows=8, ckpt_every=100)
        captured = {}
        orig = vm.EMA.update
        def spy(self, model):  # keep a handle on the trained (raw) model of this rank
            captured['model'] = model; return orig(self, model)
        vm.EMA.update = spy
        dist.init_process_group('gloo')
        rank = dist.get_rank()
        train_video_model(toy_token_videos(6, 10), out, VideoModelConfig.preset('tiny'), cfg, seed=0, resume=resume, tensorboard=False)
        torch.save(captured['model'].state_dict(), out/f'rank{rank}.pt')
        dist.destroy_process_group()
    '''))
    env = dict(os.environ, OMP_NUM_THREADS='1', DR_NO_PROGRESS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script), str(tmp_path/'run')]
    r = subprocess.run(cmd + ['4', '0'], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(cmd + ['8', '1'], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(tmp_path/'run'/'rank0.pt'), torch.load(tmp_path/'run'/'rank1.pt')
    for n in a: assert torch.equal(a[n], b[n]), n
    ck = load_checkpoint(tmp_path/'run'/'checkpoint.pt')
    assert ck['world_size'] == 2 and ck['step'] == 8 and len(ck['rng']) == 2
    assert not torch.equal(ck['rng'][0]['data'], ck['rng'][1]['data'])  # each process draws its own windows
    s = json.loads((tmp_path/'run'/'summary.json').read_text())
    assert s['world_size'] == 2 and s['resumed_from'] == 4

@pytest.fixture(scope='module')
def episodes_and_tokenizer(tmp_path_factory):
    "Six tiny episodes on disk and a 2-step `tiny` tokenizer trained on them."
    from diffusion_reward.data import Episode, save_episode
    from diffusion_reward.tokenizer import TokenizerConfig, train_tokenizer
    root = tmp_path_factory.mktemp('vid')
    rng = np.random.default_rng(0)
    for i in range(6):
        frames = np.zeros((9, 64, 64, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
        for t in range(9): frames[t, 20:30, 4 + 6 * t:14 + 6 * t] = 255  # a square moving right
        save_episode(Episode(frames, np.zeros(8, bool), dict(task='toy-v3', policy='expert')), root/'data'/f'ep{i}.npz')
    train_tokenizer(TokenizerConfig.preset('tiny'), sorted(map(str, (root/'data').glob('*.npz'))), root/'tok', steps=2, seed=0)
    ck = next(p for p in [root/'tok'/'best.pt', root/'tok'/'last.pt'] if p.exists())
    return root, ck

def test_trains_from_episode_files_with_token_cache(episodes_and_tokenizer):
    root, tok = episodes_and_tokenizer
    out = root/'video'
    s = train_video_from_episodes(str(root/'data'), tok, out, 'small', steps=3, batch_size=2, eval_every=0,
                                  tensorboard=False, seed=0, device='cpu')
    assert (out/'summary.json').exists() and (out/'video_model.pt').exists()
    assert s['data_summary']['tokenised'] + s['data_summary']['cached'] == s['data_summary']['episodes']
    assert len(list((out/'token_cache').rglob('*.npz'))) == 6
    m = VideoDiffusion.from_checkpoint(out/'video_model.pt')
    assert m.cfg.num_codes == 32 and m.cfg.conditioning == 'fused'
    assert m.data_summary['tokenizer_sha256'] == s['data_summary']['tokenizer_sha256']
    # a resumed run reads every episode from the cache and continues to the new step count
    s2 = train_video_from_episodes(str(root/'data'), tok, out, 'small', steps=5, batch_size=2, eval_every=0,
                                   tensorboard=False, seed=0, resume=True, device='cpu')
    assert s2['steps'] == 5 and s2['resumed_from'] == 3
    assert s2['data_summary']['cached'] == s2['data_summary']['episodes']

def test_console_script(episodes_and_tokenizer):
    "The installed command: exit 0 with a one-line report and summary.json; bad input: exit 2 and a message naming the problem."
    root, tok = episodes_and_tokenizer
    env = dict(os.environ, DR_NO_PROGRESS='1', OMP_NUM_THREADS='1')
    out = root/'cli'
    r = subprocess.run(['dr_train_video', str(root/'data'), '--tokenizer', str(tok), '--out', str(out), '--steps', '2',
                        '--batch_size', '2', '--eval_every', '0', '--no-tensorboard', '--device', 'cpu', '--threads', '1'],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'dr_train_video: 2 steps' in r.stdout and json.loads((out/'summary.json').read_text())['steps'] == 2
    r = subprocess.run(['dr_train_video', str(root/'nowhere'), '--tokenizer', str(tok), '--out', str(root/'cli2')],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and 'nowhere' in r.stderr and 'no such episode file or folder' in r.stderr
    r = subprocess.run(['dr_train_video', str(root/'data'), '--out', str(root/'cli3')], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and 'tokenizer' in r.stderr

def test_cli_function_called_from_python(episodes_and_tokenizer):
    "Called from Python (e.g. by the quickstart), dr_train_video returns the summary and raises on bad input."
    from diffusion_reward.video_model import dr_train_video
    root, tok = episodes_and_tokenizer
    s = dr_train_video(data=str(root/'data'), tokenizer=str(tok), out=str(root/'py'), steps=2, batch_size=2, eval_every=0,
                       tensorboard=False, device='cpu')
    assert s['steps'] == 2 and s['stopped'] == 'steps'
    with pytest.raises(DataError, match='no such episode'): dr_train_video(data=str(root/'nowhere'), tokenizer=str(tok), out=str(root/'py2'))

def test_next_frame_panel_layout(episodes_and_tokenizer):
    from diffusion_reward.data import load_episode
    from diffusion_reward.tokenizer import Tokenizer
    root, tok = episodes_and_tokenizer
    tokenizer = Tokenizer.from_checkpoint(tok, device='cpu')
    m = VideoDiffusion(VideoModelConfig.preset('tiny', num_codes=tokenizer.num_codes)).eval()
    frames = load_episode(sorted((root/'data').glob('*.npz'))[0]).frames
    img = next_frame_panel(m, tokenizer, frames, [2, 5, 8], n_samples=2, stride=3)
    assert img.shape == (3 * 66, 7 * 66, 3) and img.dtype == np.uint8
    assert np.array_equal(img[66:130, 2 * 66:2 * 66 + 64], frames[5])  # row 2, column 3: the real frame 5
    with pytest.raises(ValueError, match='targets'): next_frame_panel(m, tokenizer, frames, [1])

def test_token_cache_matches_tokenizer(episodes_and_tokenizer, tmp_path):
    from diffusion_reward.data import load_episode
    from diffusion_reward.tokenizer import Tokenizer
    root, tok = episodes_and_tokenizer
    paths = sorted((root/'data').glob('*.npz'))[:2]
    codes, info = tokenize_episodes(paths, tok, tmp_path, 'cpu')
    again, info2 = tokenize_episodes(paths, tok, tmp_path, 'cpu')
    assert info['tokenised'] == 2 and info2['cached'] == 2
    want = Tokenizer.from_checkpoint(tok, device='cpu').encode(load_episode(paths[0]).frames).numpy()
    assert np.array_equal(codes[0], want) and np.array_equal(again[0], want)

def test_cli_help_runs():
    r = subprocess.run(['dr_train_video', '--help'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and '--tokenizer' in r.stdout and '--resume' in r.stdout

def test_bf16_autocast_path_matches_fp32():
    "The bf16 autocast path (default on CUDA) runs and stays close to fp32; outputs are float32 log-probabilities."
    torch.manual_seed(0)
    m = VideoDiffusion(VideoModelConfig.preset('tiny', conditioning='cross', cross_rel_bias=True)).eval()
    cond, x_t, t = torch.randint(0, 16, (3, 2, 8, 8)), torch.randint(0, 17, (3, 64)), torch.tensor([0, 4, 9])
    ref = m.predict_x0(x_t, t, cond)
    m.precision = 'bf16'
    got = m.predict_x0(x_t, t, enc=m.encode_condition(cond))
    assert got.dtype == torch.float32
    assert (got.exp() - ref.exp()).abs().max() < 0.05

@pytest.mark.slow
def test_compiled_denoiser_matches_eager():
    torch.manual_seed(0)
    m = VideoDiffusion(VideoModelConfig.preset('tiny', conditioning='cross')).eval()
    cond, x_t, t = torch.randint(0, 16, (3, 2, 8, 8)), torch.randint(0, 17, (3, 64)), torch.tensor([0, 4, 9])
    ref = m.predict_x0(x_t, t, cond)
    m.compile_denoiser()
    torch.testing.assert_close(m.predict_x0(x_t, t, enc=m.encode_condition(cond)), ref, atol=1e-4, rtol=1e-4)
