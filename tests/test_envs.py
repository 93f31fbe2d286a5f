"Integration tests of the pixel environments: every preset builds and renders; scripted experts succeed."
import subprocess, sys
import numpy as np
import pytest
from diffusion_reward.envs import make_env, TASKS, METAWORLD_PAPER_TASKS, METAWORLD_UNSEEN_TASKS, ADROIT_TASKS

METAWORLD = METAWORLD_PAPER_TASKS + METAWORLD_UNSEEN_TASKS

def rollout_to_success(env, policy, seed):
    "Frames and per-step success until the first success or the episode's end."
    frame, info = env.reset(seed=seed)
    frames, success = [frame], []
    done = False
    while not done:
        frame, r, term, trunc, info = env.step(policy(info['state']))
        frames.append(frame); success.append(info['success']); done = term or trunc or success[-1]
    return np.stack(frames), np.array(success)

@pytest.mark.parametrize('task', METAWORLD)
def test_metaworld_scripted_expert_succeeds(task):
    from metaworld.policies import ENV_POLICY_MAP
    env = make_env(task, seed=0)
    frames, success = rollout_to_success(env, ENV_POLICY_MAP[task]().get_action, seed=0)
    env.close()
    assert success.any(), f'{task}: scripted expert never succeeded in {env.preset.episode_steps} steps'
    assert frames.shape[1:] == (64, 64, 3) and frames.dtype == np.uint8 and len({f.tobytes() for f in frames}) > 1
    # corner2 is flipped to upright: the dark background is at the top, the lit table and floor at the bottom
    assert frames[0, :8].mean() < frames[0, -8:].mean()

@pytest.mark.parametrize('task', ADROIT_TASKS)
def test_adroit_renders_and_steps(task):
    env = make_env(task, seed=1)
    frame, info = env.reset()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and frame.std() > 5
    frame2, r, term, trunc, info = env.step(env.action_space.sample())
    assert info['state'].ndim == 1 and r in (0.0, 1.0, 2.0)
    assert env.meta['camera'] == TASKS[task].camera
    env.close()

def test_same_seed_same_episode_and_overrides():
    a, b = make_env('coffee-push-v3', seed=3, episode_steps=5), make_env('coffee-push-v3', seed=3, episode_steps=5)
    act = np.full(4, 0.3, np.float32)
    fa = [a.reset()[0]] + [a.step(act)[0] for _ in range(5)]
    fb = [b.reset()[0]] + [b.step(act)[0] for _ in range(5)]
    np.testing.assert_array_equal(np.stack(fa), np.stack(fb))
    with pytest.raises(RuntimeError, match='call reset'): a.step(act)
    c = make_env('coffee-push-v3', size=32, camera='corner3', action_repeat=1)
    assert c.reset(seed=0)[0].shape == (32, 32, 3) and c.meta['camera'] == 'corner3' and c.meta['action_repeat'] == 1
    for e in (a, b, c): e.close()

def test_unknown_task_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown task 'reach-v9'.*Presets: .*'coffee-push-v3'"):
        make_env('reach-v9')

def test_metaworld_works_without_gymnasium_robotics():
    code = ("import sys; sys.modules['gymnasium_robotics'] = None\n"
            "from diffusion_reward.envs import make_env\n"
            "make_env('reach-v3', seed=0).reset()\n"
            "try: make_env('door')\n"
            "except ImportError as e: print('ADROIT:', e)\n")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "ADROIT: Adroit tasks need gymnasium-robotics" in r.stdout
