"Integration tests of diffusion_reward.data: episode files, readers, windows, DAPG unpickler, collectors, dr_collect."
import json, os, pickle, shutil, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
import imageio.v3 as iio
from conftest import run_cli
from diffusion_reward.core import DataError
from diffusion_reward.data import (Episode, save_episode, load_episode, find_episodes, load_episodes, split_episodes,
                                   WindowDataset, load_dapg_policy, DapgUnpickler, collect, collect_episode,
                                   make_policy)

def frames_(T=6, H=8, W=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (T, H, W, 3), dtype=np.uint8)

def episode(T=6, **meta):
    meta = dict(domain='metaworld', task='reach-v3', policy='expert', **meta)
    return Episode(frames_(T), np.arange(T - 1) % 2 == 1, meta)

# ---------------------------------------------------------------- episode files

def test_round_trip(tmp_path):
    ep = episode(seed_info=[1, 2], noise=0.25)
    p = save_episode(ep, tmp_path/'a'/'ep000001.npz')
    assert sorted(os.listdir(p.parent)) == ['ep000001.npz']  # no temp file left behind
    back = load_episode(p)
    np.testing.assert_array_equal(back.frames, ep.frames)
    np.testing.assert_array_equal(back.success, ep.success)
    assert back.meta == ep.meta and back.path == p and back.success.dtype == bool
    assert (back.task, back.domain, back.policy, len(back), back.succeeded) == \
           ('reach-v3', 'metaworld', 'expert', 6, True)
    with np.load(p, allow_pickle=False) as z: assert json.loads(str(z['meta']))['noise'] == 0.25

@pytest.mark.parametrize('frames,success,problem', [
    (frames_().astype(np.float32), np.zeros(5, bool), 'dtype float32, expected uint8'),
    (np.full((6, 8, 8, 3), np.nan, np.float32), np.zeros(5, bool), 'contain NaN'),
    (frames_()[..., 0], np.zeros(5, bool), 'expected (T, H, W, 3)'),
    (frames_()[..., :2], np.zeros(5, bool), 'expected (T, H, W, 3)'),
    (frames_(), np.zeros(6, bool), 'success has shape (6,) but there are 6 frames'),
    (frames_(), np.zeros(5, np.int64), 'success has dtype int64, expected bool'),
    (frames_(), np.full(5, np.nan), 'contains NaN'),
])
def test_episode_validation(frames, success, problem):
    with pytest.raises(DataError, match='x.npz: ') as e: Episode(frames, success, {}, Path('x.npz'))
    assert problem in str(e.value)

def _save_raw(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path

@pytest.mark.parametrize('arrays,problem', [
    (dict(frames=frames_().astype(np.float64), success=np.zeros(5, bool), meta=np.array('{}')),
     'frames have dtype float64, expected uint8'),
    (dict(frames=frames_()[:, :, :, 0], success=np.zeros(5, bool), meta=np.array('{}')), 'frames have shape (6, 8, 8)'),
    (dict(frames=frames_(), success=np.zeros(3, bool), meta=np.array('{}')), 'success has shape (3,)'),
    (dict(frames=frames_(), success=np.zeros(5, bool)), "missing arrays ['meta']"),
    (dict(frames=frames_(), success=np.zeros(5, bool), meta=np.array('{not json')), 'metadata is not valid JSON'),
    (dict(frames=frames_(), success=np.zeros(5, bool), meta=np.array('[1, 2]')), 'expected an object'),
])
def test_bad_npz_contents(tmp_path, arrays, problem):
    p = _save_raw(tmp_path/'bad.npz', **arrays)
    with pytest.raises(DataError) as e: load_episode(p)
    assert str(p) in str(e.value) and problem in str(e.value)

def test_corrupt_truncated_and_unknown_files(tmp_path):
    good = save_episode(episode(T=30), tmp_path/'good.npz')
    data = good.read_bytes()
    (tmp_path/'trunc.npz').write_bytes(data[:len(data) // 2])
    (tmp_path/'garbage.npz').write_bytes(b'not a zip file at all' * 10)
    flipped = bytearray(data); flipped[200:260] = bytes(60)  # damage the compressed frames, keep the zip directory
    (tmp_path/'flipped.npz').write_bytes(bytes(flipped))
    for name in ('trunc.npz', 'garbage.npz', 'flipped.npz'):
        with pytest.raises(DataError, match=f'{name}: corrupt or truncated episode file'): load_episode(tmp_path/name)
    with pytest.raises(DataError, match='missing.npz: does not exist'): load_episode(tmp_path/'missing.npz')
    (tmp_path/'ep.txt').write_text('hi')
    with pytest.raises(DataError, match=r"ep.txt: unknown episode format '.txt'"): load_episode(tmp_path/'ep.txt')

# ---------------------------------------------------------------- reference PNG folders and videos

def _png_folder(root, n=5, domain='metaworld', task='coffee-push', split='test', name='ep3', size=8):
    d = root/domain/task/split/name
    d.mkdir(parents=True)
    fr = frames_(n, size, size)
    for t in range(n): Image.fromarray(fr[t]).save(d/f'{t}.png')
    return d, fr

def test_png_folder_reader(tmp_path):
    d, fr = _png_folder(tmp_path, n=12)
    ep = load_episode(d)
    np.testing.assert_array_equal(ep.frames, fr)  # numeric, not lexical order: 10.png after 9.png
    assert ep.success.shape == (11,) and not ep.success.any() and ep.meta['success_known'] is False
    assert (ep.domain, ep.task, ep.meta['split'], ep.policy, ep.meta['episode']) == \
           ('metaworld', 'coffee-push', 'test', 'expert', 'ep3')
    # gray and RGBA frames become RGB
    Image.fromarray(fr[0, ..., 0]).save(d/'0.png'); Image.fromarray(np.dstack([fr[1], fr[1, ..., :1]])).save(d/'1.png')
    ep = load_episode(d)
    np.testing.assert_array_equal(ep.frames[1], fr[1])
    np.testing.assert_array_equal(ep.frames[0], np.repeat(fr[0, ..., :1], 3, -1))

def test_png_folder_errors(tmp_path):
    d, fr = _png_folder(tmp_path, n=5)
    (d/'2.png').rename(d/'7.png')
    with pytest.raises(DataError, match=r'ep3: frame numbers must run 0..4 without gaps: frame 2 is missing'):
        load_episode(d)
    (d/'7.png').rename(d/'2.png')
    shutil.copy(d/'1.png', d/'01.png')
    with pytest.raises(DataError, match=r'duplicate frame numbers \[1\]'): load_episode(d)
    (d/'01.png').unlink()
    Image.fromarray(frames_(1, 16, 16)[0]).save(d/'3.png')
    with pytest.raises(DataError, match=r'mixed frame sizes: 0.png is \(8, 8\), 3.png is \(16, 16\)'): load_episode(d)
    Image.fromarray(fr[3]).save(d/'3.png')
    (d/'cover.png').write_bytes((d/'0.png').read_bytes())
    with pytest.raises(DataError, match='cover.png: PNG frame names must be integers'): load_episode(d)
    (d/'cover.png').unlink()
    (d/'4.png').write_bytes((d/'4.png').read_bytes()[:40])
    with pytest.raises(DataError, match='4.png: unreadable PNG frame'): load_episode(d)
    empty = tmp_path/'metaworld'/'reach'/'train'/'ep0'; empty.mkdir(parents=True)
    with pytest.raises(DataError, match='ep0: empty episode folder: no PNG frames'): load_episode(empty)

def test_video_reader(tmp_path):
    fr = np.zeros((6, 32, 32, 3), np.uint8)
    for t in range(6): fr[t, :, : 4 * t + 2] = 200; fr[t, ..., 1] = 90
    iio.imwrite(tmp_path/'clip.gif', fr, duration=100, loop=0)
    ep = load_episode(tmp_path/'clip.gif')
    np.testing.assert_array_equal(ep.frames, fr)
    assert ep.meta['source'] == 'video' and ep.success.shape == (5,)
    iio.imwrite(tmp_path/'clip.mp4', fr, fps=10)
    ep = load_episode(tmp_path/'clip.mp4')
    assert ep.frames.shape == (6, 32, 32, 3) and ep.frames.dtype == np.uint8
    assert np.abs(ep.frames.astype(int) - fr).mean() < 8  # lossy codec, same content
    (tmp_path/'bad.mp4').write_bytes((tmp_path/'clip.mp4').read_bytes()[:200])
    with pytest.raises(DataError, match='bad.mp4: unreadable video'): load_episode(tmp_path/'bad.mp4')

# ---------------------------------------------------------------- finding, splitting, windows

def test_find_load_and_split(tmp_path):
    for task, pol in (('reach-v3', 'expert'), ('reach-v3', 'random'), ('door', 'expert')):
        for s in range(3):
            meta = dict(task=task, policy=pol, split='train' if s else 'test')
            save_episode(Episode(frames_(4), np.zeros(3, bool), meta), tmp_path/'data'/task/pol/f'ep{s:06d}.npz')
    _png_folder(tmp_path/'ref', n=3, task='reach', split='train', name='0')
    iio.imwrite(tmp_path/'ref'/'x.gif', frames_(3), duration=100)
    (tmp_path/'data'/'door'/'expert'/'ep000009.npz.corrupt').write_bytes(b'old')  # moved-aside files are not episodes
    allp = find_episodes(tmp_path)
    assert len(allp) == 11 and allp == sorted(allp, key=lambda p: p.as_posix()) and allp == find_episodes(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in find_episodes(tmp_path, task='reach', policy='expert')] == [
        'data/reach-v3/expert/ep000000.npz', 'data/reach-v3/expert/ep000001.npz', 'data/reach-v3/expert/ep000002.npz',
        'ref/metaworld/reach/train/0']
    assert len(find_episodes(tmp_path, split='test')) == 3
    assert len(find_episodes(tmp_path, task=['door', 'reach-v3'], policy=['random'])) == 3
    eps = load_episodes(tmp_path/'data', task='door')
    assert [e.task for e in eps] == ['door'] * 3 and all(isinstance(e, Episode) for e in eps)
    npz = find_episodes(tmp_path/'data')
    tr, te = split_episodes(npz, test_fraction=0.34, seed=1)
    assert (len(tr), len(te)) == (6, 3) and not set(tr) & set(te) and sorted(tr + te) == sorted(npz)
    assert sorted(p.parent.relative_to(tmp_path/'data').as_posix() for p in te) == \
           ['door/expert', 'reach-v3/expert', 'reach-v3/random']
    assert split_episodes(npz, 0.34, seed=1) == (tr, te) and split_episodes(npz, 0.34, seed=2) != (tr, te)
    with pytest.raises(DataError, match='nope: episode root is not a folder'): find_episodes(tmp_path/'nope')

def test_window_dataset(tmp_path):
    def ramp(n, task):  # frame t is filled with the value t
        frames = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 3)).copy()
        return Episode(frames, np.zeros(n - 1, bool), dict(task=task))
    p = save_episode(ramp(9, 'door'), tmp_path/'a.npz')
    ds = WindowDataset([p, ramp(5, 'reach-v3'), ramp(2, 'reach-v3')], k=2, frame_skip=2, return_task=True)
    assert len(ds) == (9 - 4) + (5 - 4) and ds.tasks == ['door', 'reach-v3']
    got = [(ds[i][0][:, 0, 0, 0].tolist(), ds[i][1]) for i in range(len(ds))]
    assert got == [([t - 4, t - 2, t], 0) for t in range(4, 9)] + [([0, 2, 4], 1)]
    x, tid = ds[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 4, 4, 3)
    dl = torch.utils.data.DataLoader(ds, batch_size=6, shuffle=True, num_workers=0,
                                     generator=torch.Generator().manual_seed(0))
    xb, tb = next(iter(dl))
    assert xb.shape == (6, 3, 4, 4, 3) and sorted(tb.tolist()) == [0, 0, 0, 0, 0, 1]
    assert WindowDataset([ramp(5, 'x')], k=0)[4][0, 0, 0, 0] == 4
    assert WindowDataset([ramp(5, 'x')], tasks=['y', 'x'], return_task=True)[0][1] == 1
    with pytest.raises(ValueError, match="tasks \\['x'\\] are not in"): WindowDataset([ramp(5, 'x')], tasks=['y'])
    with pytest.raises(ValueError, match='no episode has the 7 frames'):
        WindowDataset([ramp(5, 'x')], k=3, frame_skip=2)
    big = Episode(np.zeros((5, 8, 8, 3), np.uint8), np.zeros(4, bool), {}, Path('big.npz'))
    with pytest.raises(DataError, match='big.npz: frames are \\(8, 8\\)'): WindowDataset([ramp(5, 'x'), big])

# ---------------------------------------------------------------- DAPG policies through the restricted unpickler

class _Evil:
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))

def test_unpickler_refuses_foreign_classes(tmp_path):
    marker = tmp_path/'pwned'
    (tmp_path/'evil.pickle').write_bytes(pickle.dumps({'policy': _Evil(marker)}))
    with pytest.raises(DataError) as e: load_dapg_policy(tmp_path/'evil.pickle')
    assert str(tmp_path/'evil.pickle') in str(e.value)
    assert f'refused to unpickle {os.system.__module__}.system' in str(e.value)
    assert not marker.exists()
    cases = {  # hand-written protocol-0 pickles
        'eval': (b"cbuiltins\neval\n(S'1+1'\ntR.", 'refused to unpickle builtins.eval'),
        'getattr': (b"cbuiltins\ngetattr\n(cmjrl.utils.fc_network\nFCNetwork\nS'__subclasses__'\ntR.",
                    "refused getattr(<class"),
        'torch_load': (b"ctorch\nload\n(S'x'\ntR.", 'refused to unpickle torch.load'),
        'persid': (b"P0\n.", 'unexpected persistent id'),
    }
    for name, (data, problem) in cases.items():
        (tmp_path/f'{name}.pickle').write_bytes(data)
        with pytest.raises(DataError, match=f'{name}.pickle: ') as e: load_dapg_policy(tmp_path/f'{name}.pickle')
        assert problem in str(e.value), (name, str(e.value))
    (tmp_path/'dict.pickle').write_bytes(pickle.dumps({'a': 1}))
    with pytest.raises(DataError, match='not a DAPG policy: top-level object'): load_dapg_policy(tmp_path/'dict.pickle')
    with pytest.raises(DataError, match='DAPG policy file does not exist'): load_dapg_policy(tmp_path/'missing.pickle')

def test_dapg_policies_load_and_act(dapg_dir, tmp_path):
    for name, sizes in (('door', (39, 32, 32, 28)), ('hammer', (46, 32, 32, 26)), ('pen', (45, 64, 64, 24)),
                        ('relocate', (39, 32, 32, 30))):
        pol = load_dapg_policy(dapg_dir/f'{name}-v0.pickle')
        assert pol.layer_sizes == sizes and pol.log_std.shape == (sizes[-1],) and pol.nonlinearity == 'tanh'
    # the README's formula, written out with torch
    pol = load_dapg_policy(dapg_dir/'door-v0.pickle')
    s = np.random.default_rng(0).normal(size=(5, 39)) * 0.5
    h = (torch.tensor(s, dtype=torch.float32) - torch.tensor(pol.in_shift)) / (torch.tensor(pol.in_scale) + 1e-8)
    for i, (w, b) in enumerate(zip(pol.weights, pol.biases)):
        h = h @ torch.tensor(w).T + torch.tensor(b)
        if i < len(pol.weights) - 1: h = torch.tanh(h)
    want = torch.clamp(h * torch.tensor(pol.out_scale) + torch.tensor(pol.out_shift), -1, 1).numpy()
    np.testing.assert_allclose(pol.act(s), want, atol=1e-5)
    np.testing.assert_allclose(pol.act(s[0]), want[0], atol=1e-5)
    assert np.abs(pol.act(s * 100)).max() <= 1
    with pytest.raises(ValueError, match='expects 39-d states'): pol.act(np.zeros(45))
    data = (dapg_dir/'door-v0.pickle').read_bytes()
    (tmp_path/'trunc.pickle').write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match='trunc.pickle: corrupt or truncated policy pickle'):
        load_dapg_policy(tmp_path/'trunc.pickle')

# ---------------------------------------------------------------- collectors and dr_collect

def test_metaworld_expert_episode(tmp_path):
    paths = collect('reach-v3', 'expert', episodes=1, seed=0, out=tmp_path)
    ep = load_episode(paths[0])
    assert paths[0] == tmp_path/'reach-v3'/'expert'/'ep000000.npz'
    assert ep.frames.shape == (101, 64, 64, 3) and ep.frames.dtype == np.uint8 and ep.success.shape == (100,)
    assert ep.succeeded and paths.summary['success_rate'] == 1.0
    m = ep.meta
    keys = ('domain', 'task', 'seed', 'policy', 'camera', 'size', 'action_repeat', 'episode_steps')
    assert tuple(m[k] for k in keys) == ('metaworld', 'reach-v3', 0, 'expert', 'corner2', 64, 2, 100)
    assert m['versions']['mujoco'] and m['versions']['metaworld'] and len(m['rewards']) == 100

def test_adroit_door_expert_episode(dapg_dir, tmp_path):
    with pytest.raises(ValueError, match='needs a DAPG policy file'):
        collect('door', 'expert', episodes=1, out=tmp_path)
    paths = collect('door', 'expert', episodes=1, seed=0, out=tmp_path, expert_policy=dapg_dir/'door-v0.pickle')
    ep = load_episode(paths[0])
    assert ep.frames.shape == (101, 64, 64, 3) and ep.succeeded
    assert ep.meta['expert_policy']['file'] == 'door-v0.pickle' and ep.meta['camera'] == 'top'

def test_seeding_and_noisy_policy(tmp_path):
    a = collect('coffee-push-v3', 'random', episodes=2, seed=7, out=tmp_path/'a', episode_steps=4)
    b = collect('coffee-push', 'random', episodes=1, seed=8, out=tmp_path/'b', episode_steps=4)
    np.testing.assert_array_equal(load_episode(a[1]).frames, load_episode(b[0]).frames)  # episode i uses seed + i
    assert not np.array_equal(load_episode(a[0]).frames, load_episode(a[1]).frames)
    from diffusion_reward.envs import make_env
    env = make_env('reach-v3', episode_steps=6)
    expert = collect_episode(env, make_policy('expert', env), seed=1)
    noisy0 = collect_episode(env, make_policy('noisy', env, noise=0.0), seed=1)
    noisy1 = collect_episode(env, make_policy('noisy', env, noise=1.0), seed=1)
    env.close()
    np.testing.assert_array_equal(expert.frames, noisy0.frames)
    assert not np.array_equal(expert.frames, noisy1.frames)
    n = collect('reach-v3', 'noisy', noise=0.5, episodes=1, out=tmp_path, episode_steps=3)
    assert n[0].parent.name == 'noisy0.5' and load_episode(n[0]).meta['noise'] == 0.5
    with pytest.raises(ValueError, match='unknown policy'): collect('reach-v3', 'greedy', out=tmp_path)
    with pytest.raises(ValueError, match='only applies to policy="noisy"'):
        collect('reach-v3', 'random', noise=0.2, out=tmp_path)
    with pytest.raises(ValueError, match='only applies to Adroit tasks'):
        collect('reach-v3', expert_policy='door-v0.pickle', out=tmp_path)
    with pytest.raises(DataError, match='nope.pickle: DAPG policy file does not exist'):
        collect('door', expert_policy=tmp_path/'nope.pickle', out=tmp_path)
    assert not (tmp_path/'door').exists()

def test_collect_resumes_and_keeps_data(tmp_path):
    first = collect('reach-v3', 'random', episodes=2, seed=0, out=tmp_path, episode_steps=3)
    stamp = [p.stat().st_mtime_ns for p in first]
    first[1].write_bytes(first[1].read_bytes()[:100])  # a file truncated by a crash
    with pytest.warns(UserWarning, match='ep000001.npz: corrupt or truncated'):
        again = collect('reach-v3', 'random', episodes=3, seed=0, out=tmp_path, episode_steps=3)
    s = again.summary
    assert (s['collected'], s['skipped'], len(s['corrupt'])) == (2, 1, 1)
    assert first[0].stat().st_mtime_ns == stamp[0]
    assert (tmp_path/'reach-v3'/'random'/'ep000001.npz.corrupt').stat().st_size == 100  # moved aside, not deleted
    assert load_episode(again[1]).frames.shape == (4, 64, 64, 3)
    with pytest.raises(DataError, match='ep000000.npz: already collected with episode_steps=3, this run asks for 5'):
        collect('reach-v3', 'random', episodes=1, seed=0, out=tmp_path, episode_steps=5)
    assert first[0].stat().st_mtime_ns == stamp[0]

def _cli(*args, cwd):
    return run_cli([sys.executable, '-m', 'diffusion_reward.data', *args], cwd=cwd, env=dict(os.environ, DR_NO_PROGRESS='1'))

def test_dr_collect_cli(tmp_path):
    exe = shutil.which('dr_collect')
    args = ['reach-v3', '--policy', 'random', '--episodes', '2', '--seed', '5', '--out', 'out', '--episode_steps', '3']
    r = run_cli([exe, *args], cwd=tmp_path) if exe else _cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'dr_collect reach-v3 random: 2 episodes' in r.stdout and '2 collected, 0 already there' in r.stdout
    assert 'success rate' in r.stdout
    assert sorted(p.name for p in (tmp_path/'out'/'reach-v3'/'random').iterdir()) == ['ep000005.npz', 'ep000006.npz']
    r = _cli(*args, cwd=tmp_path)
    assert r.returncode == 0 and '0 collected, 2 already there' in r.stdout, r.stdout + r.stderr[-2000:]
    r = _cli('reach-v9', '--policy', 'random', '--episodes', '1', '--out', 'out', cwd=tmp_path)
    assert r.returncode == 2 and "dr_collect: error: unknown task 'reach-v9'" in r.stderr
    assert 'coffee-push-v3' in r.stderr

def test_dr_collect_adroit_door_expert(dapg_dir, tmp_path):
    "Issue 2: `dr_collect door --expert_policy door-v0.pickle` writes a successful 64x64 episode."
    exe = shutil.which('dr_collect')
    args = ['door', '--policy', 'expert', '--episodes', '1', '--seed', '0', '--out', 'out',
            '--expert_policy', str(dapg_dir/'door-v0.pickle')]
    env = dict(os.environ, DR_NO_PROGRESS='1', OMP_NUM_THREADS='1')
    r = run_cli([exe, *args], cwd=tmp_path, env=env) if exe else _cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'dr_collect door expert: 1 episodes' in r.stdout and 'success rate 1.00' in r.stdout, r.stdout
    ep = load_episode(tmp_path/'out'/'door'/'expert'/'ep000000.npz')
    assert ep.frames.shape == (101, 64, 64, 3) and ep.frames.dtype == np.uint8 and ep.succeeded
    assert ep.meta['expert_policy']['file'] == 'door-v0.pickle' and ep.meta['policy'] == 'expert'

@pytest.mark.slow
def test_metaworld_experts_succeed(tmp_path):
    "Issue 2: the scripted expert succeeds on seeds 0 and 1 of every MetaWorld preset task (~1 min on a 2-core CPU)."
    from diffusion_reward.envs import TASKS
    tasks = [name for name, p in TASKS.items() if p.domain == 'metaworld']
    assert len(tasks) == 15
    failed = {}
    for task in tasks:
        paths = collect(task, 'expert', episodes=2, seed=0, out=tmp_path)
        for p in paths:
            ep = load_episode(p)
            assert ep.frames.shape == (TASKS[task].episode_steps + 1, 64, 64, 3) and ep.frames.dtype == np.uint8, p
            if not ep.succeeded: failed.setdefault(task, []).append(ep.meta['seed'])
    assert not failed, f'scripted expert failed (task: seeds): {failed}'
