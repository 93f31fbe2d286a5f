"""Integration tests of the RL stack: replay memory, rewards by name on MetaWorld and Adroit, resume after a crash,
the CLI. Unit behaviour (and exact resume of an uninterrupted run) is checked in nbs/09a_rl_rewards and 09b_train_rl."""
import json, os, subprocess
from pathlib import Path
import numpy as np
import pytest
import torch
from conftest import run_cli

os.environ.setdefault('DR_NO_PROGRESS', '1')
torch.set_num_threads(1)

from diffusion_reward.core import CheckpointError, load_checkpoint
from diffusion_reward.drqv2 import DrQV2Config, ReplayBuffer
from diffusion_reward.rl_rewards import REWARDS, RewardContext, make_reward
from diffusion_reward.train_rl import TrainRLConfig, train_rl, read_csv, resident_mb
from diffusion_reward.test_utils import FakeReachEnv

def fake_env_fn(cfg, seed): return FakeReachEnv(seed)

def tiny(**kw): return TrainRLConfig.preset('tiny', **kw)


# --- replay buffer: size and memory

def test_replay_nbytes_matches_config():
    for cap, shape, A in ((1000, (64, 64, 3), 4), (777, (64, 64, 3), 28), (10, (8, 8, 3), 1)):
        rb = ReplayBuffer(cap, shape, A)
        assert rb.nbytes == ReplayBuffer.bytes_for(cap, shape, A) == cap * (int(np.prod(shape)) + 4 * A + 9)
    # the config's capacity at 64x64: 1M slots are 12.3 GB of frames plus 25 bytes per slot with 4-d actions
    assert ReplayBuffer.bytes_for(10**6, (64, 64, 3), 4) == 10**6 * (12288 + 25)


def test_replay_memory_flat_once_full():
    cap, T = 20_000, 100  # 246 MB of frames
    rb = ReplayBuffer(cap, (64, 64, 3), 4, seed=0)
    acts, rews = np.zeros((T, 4), np.float32), np.zeros(T, np.float32)
    frames = np.zeros((T + 1, 64, 64, 3), np.uint8)
    i = 0
    while rb.used + T + 1 <= cap:
        frames[:] = i % 251; rb.add_episode(frames, acts, rews); i += 1
    rb.add_episode(frames, acts, rews)  # the first eviction
    for _ in range(5): rb.sample(256)
    full = resident_mb()
    assert full > rb.nbytes / 2**20  # the buffer is resident
    for j in range(3 * cap // (T + 1)):  # overwrite the ring three times while sampling
        frames[:] = j % 251; rb.add_episode(frames, acts, rews)
        if j % 10 == 0: rb.sample(256)
    after = resident_mb()
    assert after <= 1.10 * full, (full, after)
    assert len(rb) <= cap and rb.used <= cap


def test_train_loop_memory_flat_once_buffer_full(tmp_path):
    # 26-frame episodes in a 390-slot ring: full after 15 of the 40 episodes
    cfg = tiny(task='fake', frames=2000, replay_capacity=390, eval_episodes=0, checkpoint_every_frames=10**9)
    train_rl(cfg, tmp_path, env_fn=fake_env_fn, agent_cfg=DrQV2Config.preset('tiny', update_every_steps=8))
    rows = read_csv(tmp_path / 'train.csv')
    full = [r['charts/resident_mb'] for r in rows if r['charts/episode'] >= 18]
    assert rows[-1]['charts/buffer_size'] == 375 and len(full) >= 20
    assert max(full) <= 1.10 * full[0], (full[0], max(full))


# --- every reward on a MetaWorld task and on Adroit door

@pytest.fixture(scope='module')
def expert_dir(tmp_path_factory):
    "Episode files standing in for expert demonstrations (random-action frames, labelled expert) for reach and door."
    from diffusion_reward.envs import make_env
    from diffusion_reward.data import Episode, save_episode
    root = tmp_path_factory.mktemp('experts')
    for task in ('reach-v3', 'door'):
        env = make_env(task, seed=0, episode_steps=10)
        frames = [env.reset(seed=0)[0]]
        for _ in range(10): frames.append(env.step(env.action_space.sample())[0])
        env.close()
        meta = dict(task=task, domain=env.meta['domain'], policy='expert', split='train')
        save_episode(Episode(np.stack(frames), np.zeros(10, bool), meta), root / f'{task}.npz')
    return root


@pytest.mark.parametrize('task', ['reach-v3', 'door'])
def test_each_reward_trains_on_real_tasks(task, expert_dir, tmp_path):
    assert {'sparse', 'rnd', 'amp'} <= set(REWARDS)
    for name in ('sparse', 'rnd', 'amp'):  # the learned rewards need trained models: tested with the reward module
        cfg = tiny(task=task, reward=name, frames=200, episode_steps=25, seed_frames=100, eval_episodes=1,
                   save_video=name == 'sparse')
        s = train_rl(cfg, tmp_path / name, expert_dir=str(expert_dir))
        assert s['frames'] == 200 and s['episodes'] == 4 and s['updates'] == 25
        assert [e['frame'] for e in s['eval']] == [0, 200]
        rows = read_csv(tmp_path / name / 'train.csv')
        assert rows[-1]['train/critic_loss'] is not None and np.isfinite(rows[-1]['train/critic_loss'])
        if name == 'sparse':
            assert rows[-1]['train/episode_learned_reward'] == rows[-1]['train/episode_reward']
            import imageio.v3 as iio
            gifs = sorted((tmp_path / name / 'videos').glob('*.gif'))
            assert [iio.imread(p).shape for p in gifs] == [(26, 64, 64, 3)] * 2
        else: assert rows[-1]['train/episode_learned_reward'] != rows[-1]['train/episode_reward']
        assert json.loads((tmp_path / name / 'summary.json').read_text())['reward'] == name


def test_reward_updates_between_agent_updates_are_logged(tmp_path):
    "RND's predictor updates every 100 steps (paper preset): its loss still reaches the episode's log row."
    cfg = tiny(task='fake', reward='rnd', reward_preset='paper', frames=360, seed_frames=120, eval_episodes=0)
    train_rl(cfg, tmp_path, env_fn=lambda cfg, seed: FakeReachEnv(seed, episode_steps=30))
    rows = read_csv(tmp_path / 'train.csv')  # 60-frame episodes; the update at step 100 is in episode 4 (steps 90-119)
    assert [r['train/rnd_loss'] is not None for r in rows] == [False, False, False, True, False, False]


# --- resume after a crash (exact resume of an uninterrupted run: nbs/09b_train_rl)

def _tensors(obj) -> list:
    "All tensors in nested dicts and lists, in order."
    if isinstance(obj, torch.Tensor): return [obj]
    if isinstance(obj, dict): return [t for k in sorted(obj, key=str) for t in _tensors(obj[k])]
    if isinstance(obj, (list, tuple)): return [t for v in obj for t in _tensors(v)]
    return []


def _compare_runs(a_dir, b_dir):
    a, b = load_checkpoint(Path(a_dir) / 'checkpoint.pt'), load_checkpoint(Path(b_dir) / 'checkpoint.pt')
    assert (a['step'], a['episode'], a['updates']) == (b['step'], b['episode'], b['updates'])
    for part in ('encoder', 'actor', 'critic', 'critic_target', 'critic_opt'):
        sa, sb = a['agent'][part], b['agent'][part]
        flat_a, flat_b = _tensors(sa), _tensors(sb)
        assert len(flat_a) == len(flat_b) and all(torch.equal(x, y) for x, y in zip(flat_a, flat_b)), part
    assert torch.equal(a['replay']['episodes'], b['replay']['episodes'])
    for k in ('head', 'added', 'rng'): assert a['replay'][k] == b['replay'][k], k
    data = [torch.cat([load_checkpoint(Path(d) / 'replay' / c[0])['frames'] for c in ck['replay_chunks']])
            for d, ck in ((a_dir, a), (b_dir, b))]
    assert torch.equal(*data)
    assert torch.equal(a['rng']['torch'], b['rng']['torch'])
    timing = ('charts/fps', 'charts/cpu_fps', 'charts/resident_mb', 'charts/wall_time')
    keep = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    assert keep(read_csv(Path(a_dir) / 'train.csv')) == keep(read_csv(Path(b_dir) / 'train.csv'))
    return a, b


class CrashingEnv(FakeReachEnv):
    "Raises in the middle of an episode once the run has taken `crash_at` training steps (the eval env has seed + 1)."
    crash_at, steps = None, 0
    def step(self, action):
        if self.is_train:
            CrashingEnv.steps += 1
            if CrashingEnv.steps == CrashingEnv.crash_at: raise RuntimeError('simulated crash')
        return super().step(action)


def test_resume_after_crash_between_checkpoints(tmp_path):
    "A run that dies mid-episode after its last checkpoint resumes from it; logs past the checkpoint are dropped."
    cfg = tiny(task='fake', reward='rnd', frames=300, eval_every_frames=150, checkpoint_every_frames=150)
    train_rl(cfg, tmp_path / 'full', env_fn=fake_env_fn)

    def crashing_env_fn(cfg, seed):
        env = CrashingEnv(seed); env.is_train = seed == cfg.seed
        return env
    CrashingEnv.crash_at, CrashingEnv.steps = 130, 0  # frame 260: checkpoint at 150, logs to 250, evals at 0 and 150
    with pytest.raises(RuntimeError, match='simulated crash'):
        train_rl(cfg, tmp_path / 'crash', env_fn=crashing_env_fn)
    assert [r['frame'] for r in read_csv(tmp_path / 'crash' / 'train.csv')][-1] == 250
    train_rl(cfg, tmp_path / 'crash', resume=True, env_fn=fake_env_fn)
    _compare_runs(tmp_path / 'full', tmp_path / 'crash')
    assert [r['frame'] for r in read_csv(tmp_path / 'crash' / 'eval.csv')] == [0, 150, 300]
    assert len(list((tmp_path / 'crash' / 'replay').glob('*.pt'))) == 2


# --- errors

def test_clear_errors(tmp_path):
    cfg = tiny(task='fake', frames=100, eval_episodes=0)
    with pytest.raises(ValueError, match='known: amp'):
        train_rl(cfg.replace(reward='nope'), tmp_path / 'a', env_fn=fake_env_fn)
    with pytest.raises(ValueError, match='--expert_dir'):
        train_rl(cfg.replace(reward='amp'), tmp_path / 'b', env_fn=fake_env_fn)
    with pytest.raises(CheckpointError, match='no checkpoint'):
        train_rl(cfg, tmp_path / 'c', resume=True, env_fn=fake_env_fn)
    train_rl(cfg, tmp_path / 'd', env_fn=fake_env_fn)
    with pytest.raises(CheckpointError, match='already holds a run'): train_rl(cfg, tmp_path / 'd', env_fn=fake_env_fn)
    with pytest.raises(CheckpointError, match='reward_preset'):
        train_rl(cfg.replace(reward_preset='paper'), tmp_path / 'd', resume=True, env_fn=fake_env_fn)
    with pytest.raises(CheckpointError, match='hidden_dim'):
        train_rl(cfg, tmp_path / 'd', resume=True, env_fn=fake_env_fn,
                 agent_cfg=DrQV2Config.preset('tiny', hidden_dim=32))
    with pytest.raises(Exception, match='no expert episodes'):
        make_reward('amp', RewardContext('reach-v3', (64, 64, 3), torch.device('cpu'), 0, expert_dir=str(tmp_path)))


# --- the command line

def test_cli_smoke_and_resume(tmp_path):
    out = tmp_path / 'run'
    env = dict(os.environ, DR_NO_PROGRESS='1', OMP_NUM_THREADS='1')
    def cli(*extra, frames=200):
        cmd = ['dr_train_rl', 'reach-v3', '--reward', 'sparse', '--frames', str(frames), '--seed', '3',
               '--out', str(out), '--preset', 'tiny', '--eval_episodes', '1', '--episode_steps', '25', '--device', 'cpu',
               *extra]
        return run_cli(cmd, env=env, timeout=300)
    r = cli()
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'frame         0: success rate' in r.stdout and 'summary.json' in r.stdout
    s = json.loads((out / 'summary.json').read_text())
    assert s['frames'] == 200 and s['seed'] == 3 and [e['frame'] for e in s['eval']] == [0, 200]
    r = cli()  # the same folder without --resume
    assert r.returncode != 0 and 'already holds a run' in r.stderr
    r = cli('--resume', frames=330)  # rounded up to whole 50-frame episodes (25 steps, action repeat 2)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / 'summary.json').read_text())
    assert s['frames'] == 350 and s['episodes'] == 7 and [e['frame'] for e in s['eval']] == [0, 200, 350]


# --- GPU (runs where CUDA is available)

@pytest.mark.gpu
def test_gpu_loop_and_learner_speed(tmp_path):
    "The loop runs with the learner and the replay frames on the GPU; the paper learner's speed is printed."
    from diffusion_reward.drqv2 import bench_drqv2
    cfg = tiny(task='fake', frames=300, device='cuda', eval_episodes=1)
    s = train_rl(cfg, tmp_path, env_fn=fake_env_fn)
    assert s['updates'] == (300 - 200) // 4 and load_checkpoint(tmp_path / 'checkpoint.pt')['replay']['added'] == 6
    r = bench_drqv2('paper', batch_size=256, updates=50, warmup=10, device='cuda')
    assert r['updates_per_s'] > 0


# --- state observations on the real environments (the loop itself: nbs/09b_train_rl)

def test_state_agent_on_a_real_task(tmp_path):
    """The agent sees the environment's state; RND still trains on the rendered frames, which the replay keeps.
    Adroit door here; MetaWorld state runs are `test_compare_rl_kill_and_resume`'s (its tiny preset: reach-v3, state)."""
    from diffusion_reward.envs import make_env
    task = 'door'
    env = make_env(task, seed=0)
    state_dim = len(env.reset(seed=0)[1]['state']); env.close()
    for name in ('sparse', 'rnd'):
        cfg = tiny(task=task, reward=name, obs='state', frames=200, episode_steps=25, seed_frames=100, eval_episodes=1)
        s = train_rl(cfg, tmp_path / name)
        assert s['obs'] == 'state' and s['updates'] == 25 and [e['frame'] for e in s['eval']] == [0, 200]
        ck = load_checkpoint(tmp_path / name / 'checkpoint.pt')
        assert ck['agent']['actor']['trunk.0.weight'].shape[1] == state_dim and 'encoder_opt' not in ck['agent']
        chunk = load_checkpoint(tmp_path / name / 'replay' / ck['replay_chunks'][0][0])
        assert chunk['states'].shape[1] == state_dim
        assert ('frames' in chunk) == (name == 'rnd')
        rows = read_csv(tmp_path / name / 'train.csv')
        if name == 'rnd': assert rows[-1]['train/rnd_loss'] is not None and rows[-1]['train/episode_bonus_reward'] > 0


# --- the comparison command: separate processes, killed part-way and resumed

def test_compare_rl_kill_and_resume(tmp_path):
    """dr_compare_rl --preset tiny (reach-v3, sparse and rnd, seed 1, 2 workers): killed after the first checkpoint,
    rerun to the end; every run resumes or finishes, and the CSV and the table hold every evaluation once."""
    import csv, signal, sys, time
    out = tmp_path / 'cmp'
    cmd = [sys.executable, '-m', 'diffusion_reward.compare_rl', str(out), '--preset', 'tiny', '--seeds', '1',
           '--workers', '2']
    env = dict(os.environ, DR_NO_PROGRESS='1', OMP_NUM_THREADS='1')
    p = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not list(out.glob('*/*/s*/checkpoint.pt')) and p.poll() is None and time.time() < deadline: time.sleep(0.2)
    assert p.poll() is None, p.stdout.read().decode()[-2000:]
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    assert not list(out.glob('*/*/s*/summary.json'))  # stopped part-way
    r = run_cli(cmd, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '(resume)' in r.stdout and 'FAILED' not in r.stdout
    with open(out / 'curves.csv') as f: rows = list(csv.DictReader(f))
    runs = {(row['reward'], row['seed']) for row in rows}
    assert runs == {(rw, s) for rw in ('sparse', 'rnd') for s in ('1',)}
    for run in runs:  # evaluations at 0, 80, 160 and 240 frames, each once
        assert sorted(int(row['frame']) for row in rows if (row['reward'], row['seed']) == run) == [0, 80, 160, 240]
    table = (out / 'results.md').read_text().splitlines()
    assert '| success @240 (%) | frames to 50% | frames to 100% |' in table[0]
    assert [line.split(' | ')[1:3] for line in table[2:]] == [['sparse', '1'], ['rnd', '1']]
    assert (out / 'curves.png').stat().st_size > 1000
    r = run_cli(cmd, env=env, timeout=300)  # all done: nothing to run
    assert r.returncode == 0 and 'start' not in r.stdout


# --- GPU readiness script, in its tiny CPU configuration

def test_gpu_readiness_script_tiny_on_cpu(tmp_path):
    script = Path(__file__).resolve().parents[1] / '.ci' / 'gpu_rl.sh'
    out = tmp_path / 'gpu.json'
    r = subprocess.run([str(script), '--device', 'cpu', '--preset', 'tiny', '--model_preset', 'tiny',
                        '--task', 'reach-v3', '--episode_steps', '10', '--updates', '1', '--warmup', '1',
                        '--episodes', '1', '--variants', 'fp32', '--out', str(out)],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert 'updates/s' in r.stdout and 'env frames/s (target 600)' in r.stdout
    res = json.loads(out.read_text())
    assert set(res['learner_updates_per_s']) == {'fp32'} and res['loop_env_frames_per_s'] > 0  # bf16: 16_compare_rl
