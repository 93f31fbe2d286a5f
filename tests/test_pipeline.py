"End to end on tiny configs: dr_quickstart (collect -> tokenizer -> video model -> stats -> eval), resume, dr_eval, dr_relabel."
import json, shutil, subprocess, sys
import numpy as np
import pytest
from pathlib import Path

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('qs')/'run'
    r = subprocess.run(['dr_quickstart', '--preset', 'tiny', '--task', 'reach-v3', '--out', str(out), '--threads', '2'],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout

def test_quickstart_writes_every_stage_and_report(tiny_run):
    out, stdout = tiny_run
    for stage in ('collect', 'preview', 'tokenizer', 'video', 'stats', 'eval'):
        assert (out/'stages'/f'{stage}.json').exists(), stage
    ev = json.loads((out/'eval.json').read_text())['tasks']['reach-v3']
    for name in ('learned', 'learned_one_pass', 'baseline_tokens', 'baseline_pixels'):
        assert 0.0 <= ev[name]['auroc_expert_vs_random'] <= 1.0
    assert json.loads((out/'eval.json').read_text())['estimator']['estimator'] == 'one_pass_likelihood'
    assert set(ev['episodes']) == {'expert', 'random', 'noisy0.5'}
    assert ev['episodes']['expert'] == 2      # the held-out (test split) experts only
    assert (out/'plots'/'reach-v3.png').stat().st_size > 1000
    assert (out/'preview'/'expert_sheet.png').exists() and (out/'preview'/'random.gif').exists()
    report = (out/'report.md').read_text()
    assert 'AUROC expert vs random' in report and 'baseline' in report
    assert 'learned (one_pass_likelihood): judged' in report and 'learned (one_pass), same model' in report
    assert 'expert vs each kind: noisy0.5 ' in report

def test_quickstart_rerun_skips_finished_stages(tiny_run):
    out, _ = tiny_run
    before = (out/'eval.json').stat().st_mtime_ns
    r = subprocess.run(['dr_quickstart', '--preset', 'tiny', '--task', 'reach-v3', '--out', str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('done before, skipped') == 6
    assert (out/'eval.json').stat().st_mtime_ns == before

def test_quickstart_refuses_another_config_in_same_folder(tiny_run):
    out, _ = tiny_run
    r = subprocess.run(['dr_quickstart', '--preset', 'tiny', '--task', 'reach-v3', '--out', str(out), '--seed', '1'], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'another configuration' in r.stderr and 'seed' in r.stderr

def test_quickstart_rescores_when_only_the_estimator_changes(tiny_run, tmp_path):
    out, _ = tiny_run
    copy = tmp_path/'run'; shutil.copytree(out, copy, ignore=shutil.ignore_patterns('tb'))
    r = subprocess.run(['dr_quickstart', '--preset', 'tiny', '--task', 'reach-v3', '--out', str(copy), '--estimator', 'one_pass', '--compare', 'none'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert 're-scoring the trained models' in r.stdout and r.stdout.count('done before, skipped') == 4
    ev = json.loads((copy/'eval.json').read_text())
    assert ev['estimator']['estimator'] == 'one_pass' and ev['compare'] == []
    assert 'learned_one_pass' not in ev['tasks']['reach-v3']
    assert 'learned (one_pass): judged' in (copy/'report.md').read_text()

def test_reward_from_checkpoint_standardises_and_checks_stats(tiny_run, tmp_path):
    from diffusion_reward.reward import DiffusionReward
    from diffusion_reward.data import find_episodes, load_episode
    from diffusion_reward.core import CheckpointError
    out, _ = tiny_run
    ckpt = out/'video'/'video_model.pt'
    ep = load_episode(find_episodes(out/'data', policy='expert', split='test')[0])
    dr = DiffusionReward.from_checkpoint(ckpt, task='reach-v3', estimator='one_pass_likelihood')
    raw = DiffusionReward.from_checkpoint(ckpt, standardize=False, estimator='one_pass_likelihood')
    r, r_raw = dr(ep.frames), raw(ep.frames)
    assert r.shape == (len(ep.frames) - 1,)
    np.testing.assert_allclose(r, (r_raw - dr.stats['mean']) / dr.stats['std'], rtol=1e-5)
    with pytest.raises(CheckpointError, match="no statistics for estimator setting 'entropy"):
        DiffusionReward.from_checkpoint(ckpt, task='reach-v3', estimator='entropy')
    with pytest.raises(CheckpointError, match="no statistics for task 'door'"):
        DiffusionReward.from_checkpoint(ckpt, task='door', estimator='one_pass_likelihood')
    with pytest.raises(ValueError, match='need the task name'):
        DiffusionReward.from_checkpoint(ckpt, estimator='one_pass_likelihood')
    # a retrained (here: altered) checkpoint no longer matches the statistics beside it
    other = tmp_path/'video'; shutil.copytree(out/'video', other, ignore=shutil.ignore_patterns('tb', 'token_cache'))
    with open(other/'video_model.pt', 'ab') as f: f.write(b'\0')
    with pytest.raises(CheckpointError):
        DiffusionReward.from_checkpoint(other/'video_model.pt', task='reach-v3', estimator='one_pass_likelihood')

def test_dr_eval_and_dr_relabel_clis(tiny_run, tmp_path):
    out, _ = tiny_run
    ckpt = out/'video'/'video_model.pt'
    r = subprocess.run(['dr_eval', str(ckpt), str(out/'data'), '--out', str(tmp_path/'ev'), '--raw', '--estimator', 'entropy', '--stride', '5',
                        '--compare', 'one_pass_likelihood'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads((tmp_path/'ev'/'eval.json').read_text())
    assert ev['estimator']['estimator'] == 'entropy' and ev['standardized'] is False
    assert 'verdict' in ev['tasks']['reach-v3'] and ev['compare'] == ['one_pass_likelihood']
    assert 'reach-v3 [one_pass_likelihood]: AUROC expert/random' in r.stdout
    r = subprocess.run(['dr_relabel', str(ckpt), str(out/'data'), str(tmp_path/'rew.npz'), '--task', 'reach-v3', '--estimator', 'one_pass_likelihood'],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    with np.load(tmp_path/'rew.npz') as z:
        assert len(z.files) == 9 and all(z[k].shape == (8,) for k in z.files)   # 9 tiny episodes of 8 steps
    r = subprocess.run(['dr_eval', str(ckpt), str(tmp_path/'nowhere')], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and 'nowhere' in r.stderr

def test_unknown_task_fails_before_any_work(tmp_path):
    r = subprocess.run(['dr_quickstart', '--task', 'fly-v3', '--out', str(tmp_path/'x')], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unknown task 'fly-v3'" in r.stderr
    assert not (tmp_path/'x'/'data').exists()
