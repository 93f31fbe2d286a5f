"""End to end on tiny configs: dr_quickstart (collect -> tokenizer -> video model -> stats -> eval), resume,
reproducibility, dr_eval, dr_relabel."""
import json, shutil, sys
import numpy as np
import pytest
from pathlib import Path
from conftest import run_cli

TINY = ['dr_quickstart', '--preset', 'tiny', '--task', 'reach-v3', '--threads', '2']

def run_tiny(out:Path, *extra) -> str:
    r = run_cli(TINY + ['--out', str(out), *extra], timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout

@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('qs')/'run'
    return out, run_tiny(out)

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
    html = (out/'plots'/'reach-v3_roc.html').read_text()   # opens offline: plotly.js beside it, no CDN
    assert 'src="plotly.min.js"' in html and 'cdn.plot.ly' not in html and (out/'plots'/'plotly.min.js').exists()
    assert (out/'preview'/'expert_sheet.png').exists() and (out/'preview'/'random.gif').exists()
    report = (out/'report.md').read_text()
    assert 'AUROC expert vs random' in report and 'baseline' in report
    assert 'learned (one_pass_likelihood): judged' in report and 'learned (one_pass), same model' in report
    assert 'expert vs each kind: noisy0.5 ' in report
    # the training stages' records reach the report (their summaries name these fields differently)
    assert 'Tokenizer: 0.0' in report and 'M parameters, 10 of 10 steps, held-out PSNR' in report
    assert 'Video model: 0.' in report and 'M parameters, 10 of 10 steps.' in report
    assert 'WARNING' not in report and 'n/a dB' not in report

def test_same_seed_gives_identical_eval_json(tiny_run, tmp_path):
    "Training stops on step counts: a second run in another folder with the same seed reproduces every number."
    out, _ = tiny_run
    run_tiny(tmp_path/'again')
    first, second = (json.loads((d/'eval.json').read_text()) for d in (out, tmp_path/'again'))
    assert first.pop('video_checkpoint') != second.pop('video_checkpoint')   # the only field naming the folder
    assert first == second

def test_time_guard_cut_is_reported(tmp_path):
    "A guard far too short for the step count stops training early and says so in the warning and report.md."
    from diffusion_reward.quickstart import QuickstartConfig, quickstart
    cfg = QuickstartConfig.preset('tiny', task='reach-v3', tokenizer_steps=100_000, guard_minutes=0.001,
                                  train_episodes=2, test_episodes=1, random_episodes=1, noisy_levels=())
    with pytest.warns(UserWarning, match='guard cut training at step'):
        res = quickstart(cfg, tmp_path/'cut')
    assert res['tokenizer']['step'] < 100_000 and 'cut_by_guard' in res['tokenizer']
    assert '**WARNING: tokenizer: the 0.001-minute guard cut training' in (tmp_path/'cut'/'report.md').read_text()

def test_quickstart_rerun_skips_finished_stages(tiny_run):
    out, _ = tiny_run
    before = (out/'eval.json').stat().st_mtime_ns
    r = run_cli(TINY + ['--out', str(out)], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('done before, skipped') == 6
    assert (out/'eval.json').stat().st_mtime_ns == before

def test_quickstart_refuses_another_config_in_same_folder(tiny_run):
    out, _ = tiny_run
    r = run_cli(TINY + ['--out', str(out), '--seed', '1'], timeout=300)
    assert r.returncode != 0 and 'another configuration' in r.stderr and 'seed' in r.stderr

def test_quickstart_rescores_when_only_the_estimator_changes(tiny_run, tmp_path):
    out, _ = tiny_run
    copy = tmp_path/'run'; shutil.copytree(out, copy, ignore=shutil.ignore_patterns('tb'))
    r = run_cli(TINY + ['--out', str(copy), '--estimator', 'one_pass', '--compare', 'none'], timeout=300)
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
    r = run_cli(['dr_eval', str(ckpt), str(out/'data'), '--out', str(tmp_path/'ev'), '--raw',
                 '--estimator', 'entropy', '--stride', '5', '--compare', 'one_pass_likelihood'], timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ev = json.loads((tmp_path/'ev'/'eval.json').read_text())
    assert ev['estimator']['estimator'] == 'entropy' and ev['standardized'] is False
    assert 'verdict' in ev['tasks']['reach-v3'] and ev['compare'] == ['one_pass_likelihood']
    assert 'reach-v3 [one_pass_likelihood]: AUROC expert/random' in r.stdout
    r = run_cli(['dr_relabel', str(ckpt), str(out/'data'), str(tmp_path/'rew.npz'), '--task', 'reach-v3',
                 '--estimator', 'one_pass_likelihood'], timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    with np.load(tmp_path/'rew.npz') as z:
        assert len(z.files) == 9 and all(z[k].shape == (8,) for k in z.files)   # 9 tiny episodes of 8 steps
    r = run_cli(['dr_eval', str(ckpt), str(tmp_path/'nowhere')], timeout=120)
    assert r.returncode != 0 and 'nowhere' in r.stderr

def test_unknown_task_fails_before_any_work(tmp_path):
    r = run_cli(['dr_quickstart', '--task', 'fly-v3', '--out', str(tmp_path/'x')], timeout=120)
    assert r.returncode != 0 and "unknown task 'fly-v3'" in r.stderr
    assert not (tmp_path/'x'/'data').exists()
