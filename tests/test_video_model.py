"""Video model integration: DDP (gloo, 2 processes), training from episode files through the token cache, the CLI, and
the windows the likelihood reward scores. Unit behaviour (KV cache, chain, loss, exact resume, benchmark counts) is
checked in nbs/05a_video_model.ipynb and nbs/05b_video_train.ipynb."""
import json, os, sys, textwrap
import numpy as np
import pytest
import torch
from conftest import run_cli
from diffusion_reward.core import DataError, load_checkpoint
from diffusion_reward.test_utils import toy_token_videos
from diffusion_reward.video_model import VideoModelConfig, VideoDiffusion, TokenWindows
from diffusion_reward.video_train import tokenize_episodes, train_video_from_episodes

torch.set_num_threads(1)

def test_reward_scores_only_windows_the_model_trains_on(monkeypatch):
    "Every (condition, target) window the likelihood reward scores is one `TokenWindows` trains on, and vice versa."
    import diffusion_reward.reward as rw
    vids = toy_token_videos(3, 7, seed=0)
    model = VideoDiffusion(VideoModelConfig.preset('tiny')).eval()
    seen, orig = [], rw.score_windows
    def spy(model, cfg, cond, target, *args, **kw):
        seen.extend(zip(cond.cpu(), target.cpu())); return orig(model, cfg, cond, target, *args, **kw)
    monkeypatch.setattr(rw, 'score_windows', spy)
    rw.score_token_episodes(model, vids, rw.RewardConfig.preset('fast_likelihood'))
    tw = TokenWindows(vids, 2, 8, 16)
    key = lambda c, t: (c.long().numpy().tobytes(), t.long().numpy().tobytes())
    assert len(seen) == sum(len(v) - 1 for v in vids) == len(tw)
    assert {key(c, t) for c, t in seen} == {key(c, t) for c, t in zip(*tw.get(torch.arange(len(tw))))}

def test_ddp_gloo_two_processes(tmp_path):
    "torchrun with 2 CPU processes: training runs, ranks stay in sync, rank 0 writes files, DDP resume works."
    script = tmp_path/'ddp_train.py'
    script.write_text(textwrap.dedent('''
        import sys, torch, torch.distributed as dist
        from pathlib import Path
        torch.set_num_threads(1)
        from diffusion_reward.test_utils import toy_token_videos
        from diffusion_reward.video_model import VideoModelConfig
        from diffusion_reward.video_train import VideoTrainConfig, train_video_model
        import diffusion_reward.video_train as vt
        out, steps, resume = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == '1'
        cfg = VideoTrainConfig.preset('small', steps=steps, batch_size=4, warmup_steps=2, log_every=2, eval_every=0,
                                      eval_windows=8, ckpt_every=100)
        captured = {}
        orig = vt.EMA.update
        def spy(self, model):  # keep a handle on the trained (raw) model of this rank
            captured['model'] = model; return orig(self, model)
        vt.EMA.update = spy
        dist.init_process_group('gloo')
        rank = dist.get_rank()
        train_video_model(toy_token_videos(6, 10), out, VideoModelConfig.preset('tiny'), cfg, seed=0, resume=resume,
                          tensorboard=False)
        torch.save(captured['model'].state_dict(), out/f'rank{rank}.pt')
        dist.destroy_process_group()
    '''))
    env = dict(os.environ, OMP_NUM_THREADS='1', DR_NO_PROGRESS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2', str(script),
           str(tmp_path/'run')]
    r = run_cli(cmd + ['4', '0'], env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli(cmd + ['8', '1'], env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = torch.load(tmp_path/'run'/'rank0.pt'), torch.load(tmp_path/'run'/'rank1.pt')
    for n in a: assert torch.equal(a[n], b[n]), n
    ck = load_checkpoint(tmp_path/'run'/'checkpoint.pt')
    assert ck['world_size'] == 2 and ck['step'] == 8 and len(ck['rng']) == 2
    gens = [r['generators'] for r in ck['rng']]  # (data, noise) per process
    assert not torch.equal(gens[0][0], gens[1][0])  # each process draws its own windows
    s = json.loads((tmp_path/'run'/'summary.json').read_text())
    assert s['world_size'] == 2 and s['resumed_from'] == 4

@pytest.fixture(scope='module')
def episodes_and_tokenizer(tmp_path_factory):
    "Six tiny episodes on disk and a 2-step `tiny` tokenizer trained on them."
    from diffusion_reward.data import Episode, save_episode
    from diffusion_reward.tokenizer import TokenizerConfig
    from diffusion_reward.tokenizer_train import train_tokenizer
    root = tmp_path_factory.mktemp('vid')
    rng = np.random.default_rng(0)
    for i in range(6):
        frames = np.zeros((9, 64, 64, 3), np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
        for t in range(9): frames[t, 20:30, 4 + 6 * t:14 + 6 * t] = 255  # a square moving right
        save_episode(Episode(frames, np.zeros(8, bool), dict(task='toy-v3', policy='expert')), root/'data'/f'ep{i}.npz')
    train_tokenizer(TokenizerConfig.preset('tiny'), sorted(map(str, (root/'data').glob('*.npz'))), root/'tok', steps=2,
                    seed=0)
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
    "The installed command: exit 0, a one-line report and summary.json; bad input: exit 2 and a message naming it."
    root, tok = episodes_and_tokenizer
    env = dict(os.environ, DR_NO_PROGRESS='1', OMP_NUM_THREADS='1')
    out = root/'cli'
    r = run_cli(['dr_train_video', str(root/'data'), '--tokenizer', str(tok), '--out', str(out), '--steps', '2',
                 '--batch_size', '2', '--eval_every', '0', '--no-tensorboard', '--device', 'cpu', '--threads', '1'],
                env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'dr_train_video: 2 steps' in r.stdout and json.loads((out/'summary.json').read_text())['steps'] == 2
    r = run_cli(['dr_train_video', str(root/'nowhere'), '--tokenizer', str(tok), '--out', str(root/'cli2')],
                env=env, timeout=300)
    assert r.returncode == 2 and 'nowhere' in r.stderr and 'no such episode file or folder' in r.stderr
    r = run_cli(['dr_train_video', str(root/'data'), '--out', str(root/'cli3')], env=env, timeout=300)
    assert r.returncode == 2 and 'tokenizer' in r.stderr
    r = run_cli(['dr_train_video', '--help'], timeout=120)
    assert r.returncode == 0 and '--tokenizer' in r.stdout and '--resume' in r.stdout

def test_cli_function_called_from_python(episodes_and_tokenizer):
    "Called from Python (e.g. by the quickstart), dr_train_video returns the summary and raises on bad input."
    from diffusion_reward.video_train import dr_train_video
    root, tok = episodes_and_tokenizer
    s = dr_train_video(data=str(root/'data'), tokenizer=str(tok), out=str(root/'py'), steps=2, batch_size=2,
                       eval_every=0, tensorboard=False, device='cpu')
    assert s['steps'] == 2 and s['stopped'] == 'steps'
    with pytest.raises(DataError, match='no such episode'):
        dr_train_video(data=str(root/'nowhere'), tokenizer=str(tok), out=str(root/'py2'))

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
