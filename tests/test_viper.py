"""VIPER and the learned rewards in RL, end to end: `dr_train_viper` on episode files (with resume), `viper` vs
`viper_std`, and `dr_train_rl` with `diffusion`, `viper` and `viper_std` on tiny checkpoints of reach-v3 and Adroit
door, through the console script too. The model, its windows, training and exact resume are checked in
nbs/14_viper."""
import json, os, shutil
from pathlib import Path
import numpy as np
import pytest
import torch
from conftest import run_cli

os.environ.setdefault('DR_NO_PROGRESS', '1')
torch.set_num_threads(1)

from diffusion_reward.core import CheckpointError, load_checkpoint, load_json, file_sha256
from diffusion_reward.viper import dr_train_viper, VIPER_STATS_FILE, STATS_KEY
from diffusion_reward.rl_rewards import RewardContext, make_reward, DIFFUSION_ALPHA
from diffusion_reward.train_rl import dr_train_rl, read_csv

TASK = 'reach-v3'


# --- tiny checkpoints on real reach-v3 episodes

def _tiny_learned_models(root:Path, task:str, expert_policy=None) -> dict:
    "Expert episodes of `task`, a tiny tokenizer, video model (+ entropy statistics) and VIPER model (+ statistics)."
    from diffusion_reward.data import collect, find_episodes
    from diffusion_reward.tokenizer_train import train_tokenizer
    from diffusion_reward.video_model import VideoModelConfig
    from diffusion_reward.video_train import tokenize_episodes, train_video_model, VideoTrainConfig
    from diffusion_reward.reward import dr_reward_stats
    data = root / 'data'
    collect(task, 'expert', 3, 0, data, episode_steps=8, split='train', expert_policy=expert_policy)
    paths = [str(p) for p in find_episodes(data)]
    train_tokenizer('tiny', paths, root / 'tok', steps=4, seed=0, device='cpu')
    tok = root / 'tok' / 'best.pt'
    toks, info = tokenize_episodes(paths, tok, root / 'cache', 'cpu')
    vcfg = VideoTrainConfig.preset('small', steps=4, batch_size=4, warmup_steps=2, eval_every=0, eval_windows=8,
                                   log_every=2, ckpt_every=100)
    train_video_model(toks, root / 'video', VideoModelConfig.preset('tiny', num_codes=32), vcfg, seed=0, device='cpu',
                      data_summary=info, tensorboard=False)
    video = root / 'video' / 'video_model.pt'
    dr_reward_stats(video_ckpt=str(video), data=str(data), task=task, device='cpu')
    s = dr_train_viper(str(data), tokenizer=str(tok), out=str(root / 'viper'), preset='tiny', steps=20, seed=0,
                       device='cpu')
    return dict(root=root, data=data, tokenizer=tok, video=video, viper=root / 'viper' / 'viper.pt', viper_summary=s)

@pytest.fixture(scope='module')
def tiny_models(tmp_path_factory):
    "Tiny learned-reward checkpoints on reach-v3 expert episodes."
    return _tiny_learned_models(tmp_path_factory.mktemp('learned'), TASK)

@pytest.fixture(scope='module')
def tiny_door_models(tmp_path_factory, dapg_dir):
    "Tiny learned-reward checkpoints on Adroit door episodes of the DAPG expert."
    return _tiny_learned_models(tmp_path_factory.mktemp('learned_door'), 'door',
                                expert_policy=str(dapg_dir / 'door-v0.pickle'))


def test_dr_train_viper_writes_model_and_expert_statistics(tiny_models):
    s, vp = tiny_models['viper_summary'], tiny_models['viper']
    assert s['steps'] == 20 and set(s['stats']) == {TASK}
    stats = load_json(vp.parent / VIPER_STATS_FILE)
    assert stats['checkpoint_sha256'] == file_sha256(vp)
    entry = stats['entries'][STATS_KEY][TASK]
    assert entry['frames'] > 0 and entry['std'] > 0
    ck = load_checkpoint(vp)
    assert ck['kind'] == 'viper' and ck['data_summary']['tokenizer_sha256'] == file_sha256(tiny_models['tokenizer'])


def test_dr_train_viper_resume_extends_and_refreshes_statistics(tiny_models, tmp_path):
    out = tmp_path / 'viper'
    shutil.copytree(tiny_models['viper'].parent, out)
    old_sha = file_sha256(out / 'viper.pt')
    s = dr_train_viper(str(tiny_models['data']), tokenizer=str(tiny_models['tokenizer']), out=str(out), preset='tiny',
                       steps=25, seed=0, resume=True, device='cpu')
    assert s['steps'] == 25 and s['resumed_from'] == 20
    stats = load_json(out / VIPER_STATS_FILE)
    assert stats['checkpoint_sha256'] == file_sha256(out / 'viper.pt') != old_sha


def test_viper_and_viper_std_rewards_differ_by_an_affine_map(tiny_models):
    from diffusion_reward.data import find_episodes, load_episode
    frames = load_episode(find_episodes(tiny_models['data'])[0]).frames
    ctx = RewardContext(TASK, (64, 64, 3), torch.device('cpu'), 0, preset='tiny', checkpoint=str(tiny_models['viper']))
    raw_fn, std_fn = make_reward('viper', ctx), make_reward('viper_std', ctx)
    assert raw_fn.model.stats is None and std_fn.model.stats is not None
    assert raw_fn.model_weight == std_fn.model_weight == 1.0 and raw_fn.rnd_weight == std_fn.rnd_weight == 0.5
    raw, std = raw_fn.model(frames), std_fn.model(frames)
    assert raw.shape == std.shape == (len(frames) - 1,)
    assert np.abs(raw - std).min() > 1e-3                     # really different rewards
    mu, sigma = std_fn.model.stats['mean'], std_fn.model.stats['std']
    assert np.allclose(std, (raw - mu) / sigma, atol=1e-4)     # the same log-likelihood, standardised
    assert raw.max() < 0                                      # raw: a log-likelihood in nats per frame
    # the whole reward: model + 0.5 RND + sparse, RND without normalisation so it can be recomputed
    from diffusion_reward.rnd import frames_chw
    ref = make_reward('viper', RewardContext(TASK, (64, 64, 3), torch.device('cpu'), 0, preset='reference',
                                             checkpoint=str(tiny_models['viper'])))
    sparse = np.arange(len(frames) - 1, dtype=np.float32) % 2
    expected = raw + 0.5 * ref.rnd.raw_reward(frames_chw(frames[1:])).double().numpy() + sparse
    assert np.allclose(ref(frames, sparse), expected, atol=1e-3)


def test_learned_rewards_need_their_checkpoint_and_statistics(tiny_models, tmp_path):
    for name in ('diffusion', 'viper', 'viper_std'):
        with pytest.raises(ValueError, match='--reward_checkpoint'):
            make_reward(name, RewardContext(TASK, (64, 64, 3), torch.device('cpu'), 0))
    ctx = RewardContext('door', (64, 64, 3), torch.device('cpu'), 0, checkpoint=str(tiny_models['viper']))
    with pytest.raises(CheckpointError, match="no statistics for task 'door'"): make_reward('viper_std', ctx)
    make_reward('viper', ctx)  # the raw VIPER reward needs no statistics
    ctx = RewardContext('door', (64, 64, 3), torch.device('cpu'), 0, checkpoint=str(tiny_models['video']))
    with pytest.raises(CheckpointError, match="no statistics for task 'door'"): make_reward('diffusion', ctx)


def test_diffusion_reward_mix_weights(tiny_models):
    ctx = RewardContext(TASK, (64, 64, 3), torch.device('cpu'), 0, preset='tiny', checkpoint=str(tiny_models['video']))
    r = make_reward('diffusion', ctx)
    assert r.model.cfg.estimator == 'entropy' and r.model.stats is not None
    assert np.isclose(r.model_weight, 1 - DIFFUSION_ALPHA) and r.rnd_weight == DIFFUSION_ALPHA == 0.95


@pytest.mark.parametrize('reward', ['diffusion', 'viper_std'])
def test_dr_train_rl_runs_with_learned_reward(tiny_models, tmp_path, reward):
    ckpt = tiny_models['video'] if reward == 'diffusion' else tiny_models['viper']
    out = tmp_path / reward
    dr_train_rl(TASK, reward=reward, frames=1, preset='tiny', eval_episodes=1, episode_steps=25, out=str(out),
                reward_checkpoint=str(ckpt), device='cpu')
    _check_run(out, reward)


@pytest.mark.parametrize('reward', ['diffusion', 'viper', 'viper_std'])
def test_dr_train_rl_runs_with_learned_reward_on_adroit_door(tiny_door_models, tmp_path, reward):
    ckpt = tiny_door_models['video'] if reward == 'diffusion' else tiny_door_models['viper']
    out = tmp_path / reward
    dr_train_rl('door', reward=reward, frames=1, preset='tiny', eval_episodes=1, episode_steps=25, out=str(out),
                reward_checkpoint=str(ckpt), device='cpu')
    _check_run(out, reward)


def test_dr_train_rl_console_script_finds_viper(tiny_models, tmp_path):
    """A process with no module of the package loaded (`conftest.run_cli`): `rl_rewards.REWARDS` names
    `diffusion_reward.rl_rewards:viper_reward`, which imports VIPER on first use."""
    out = tmp_path / 'viper'
    exe = shutil.which('dr_train_rl')
    assert exe, 'the dr_train_rl console script is not installed (pip install -e .)'
    r = run_cli([exe, TASK, '--reward', 'viper', '--frames', '1', '--preset', 'tiny', '--eval_episodes', '1',
                 '--episode_steps', '25', '--out', str(out), '--reward_checkpoint', str(tiny_models['viper']),
                 '--device', 'cpu'],
                timeout=300, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'success rate' in r.stdout
    _check_run(out, 'viper')


def _check_run(out:Path, reward:str):
    s = json.loads((out / 'summary.json').read_text())
    assert s['reward'] == reward and s['frames'] == 50 and s['episodes'] == 1 and len(s['eval']) == 2  # 25 steps x 2
    rows = read_csv(out / 'train.csv')
    assert len(rows) == 1 and rows[0]['train/episode_learned_reward'] != rows[0]['train/episode_reward']
    assert (out / 'checkpoint.pt').exists()
