"Integration tests of the domain suites: same seed same numbers, no unseen task in training, clear errors, shipped models."
import numpy as np
import pytest
from diffusion_reward.core import DataError, load_json, load_checkpoint
from diffusion_reward.data import collect, load_episode
from diffusion_reward.evaluate import auroc
from diffusion_reward.suite import (SuiteConfig, suite, run_suite, pretrained_names, suite_tokenizer_psnr,
                                    suite_prediction_accuracy)
from diffusion_reward.reward import DiffusionReward

TINY = SuiteConfig.preset('tiny')

@pytest.fixture(scope='module')
def tiny_roots(tmp_path_factory):
    "The tiny suite run twice, with the same seed, in two folders."
    roots = [tmp_path_factory.mktemp(f'suite{i}') for i in range(2)]
    for r in roots: suite(TINY, r)
    return roots

def _numbers(ev:dict) -> dict:
    "Every AUROC and rank correlation of an eval.json, without paths."
    keys = ('auroc_expert_vs_random', 'auroc_expert_vs_noisy', 'spearman_noise')
    return {t: {n: {k: r.get(k) for k in keys} for n, r in d.items() if isinstance(r, dict) and 'auroc_expert_vs_random' in r}
            for t, d in ev['tasks'].items()}

def test_same_seed_gives_the_same_numbers(tiny_roots):
    a, b = (load_json(r/'seed0'/'eval.json') for r in tiny_roots)
    assert _numbers(a) == _numbers(b)
    assert set(a['tasks']) == {*TINY.train_tasks, *TINY.unseen_tasks}

def test_no_video_of_an_unseen_task_reaches_training(tiny_roots):
    run = tiny_roots[0]/'seed0'
    summary = load_checkpoint(run/'video'/'video_model.pt')['data_summary']
    trained = summary['train_paths'] + summary['heldout_paths']
    assert trained and all(any(f'/{t}/' in p for t in TINY.train_tasks) for p in trained)
    assert not any(f'/{t}/' in p for p in trained for t in TINY.unseen_tasks)
    assert all(load_episode(p).meta['policy'] == 'expert' for p in trained)
    assert load_json(run/'stages'/'video.json')['train_episodes'] == len(TINY.train_tasks) * TINY.train_episodes

def test_rerun_resumes_and_report_names_targets(tiny_roots, capsys):
    before = load_json(tiny_roots[0]/'seed0'/'eval.json')
    suite(TINY, tiny_roots[0])
    assert 'done before, skipped' in capsys.readouterr().out
    assert _numbers(load_json(tiny_roots[0]/'seed0'/'eval.json')) == _numbers(before)
    report = (tiny_roots[0]/'report.md').read_text()
    assert 'Unseen tasks (zero-shot)' in report and 'tasks where the learned reward beats the better baseline' in report
    assert (tiny_roots[0]/'suite.png').stat().st_size > 1000

def test_another_configuration_in_the_same_folder_fails_first(tiny_roots):
    with pytest.raises(ValueError, match='train_episodes'):
        run_suite(TINY.replace(train_episodes=4), tiny_roots[1])

def test_adroit_suite_names_the_missing_policy_before_any_work(tmp_path):
    with pytest.raises(DataError, match='door-v0.pickle: missing'):
        run_suite(SuiteConfig.preset('adroit'), tmp_path/'root', expert_dir=tmp_path)
    assert not (tmp_path/'root').exists()

# each shipped model and a task its card shows it separating (MetaWorld assembly-v3: 1.000 / 1.000 on 8 + 8 episodes;
# Adroit hammer: 1.000 / 1.000)
SHIPPED_CHECKS = {'metaworld': 'assembly-v3', 'adroit': 'hammer'}

def test_every_shipped_model_is_checked():
    assert pretrained_names() and set(pretrained_names()) <= set(SHIPPED_CHECKS), pretrained_names()

@pytest.mark.parametrize('name', sorted(SHIPPED_CHECKS))
def test_shipped_model_separates_fresh_expert_and_random_episodes(name, tmp_path, request):
    if name not in pretrained_names(): pytest.skip(f'no {name} model ships with the package')
    task = SHIPPED_CHECKS[name]
    policy = request.getfixturevalue('dapg_dir')/f'{task}-v0.pickle' if name == 'adroit' else None
    reward = DiffusionReward.pretrained(name, task=task)
    scores = {}
    for kind in ('expert', 'random'):
        paths = collect(task, kind, 3, 987_000, tmp_path, expert_policy=policy if kind == 'expert' else None)
        scores[kind] = [float(np.mean(reward(load_episode(p).frames))) for p in paths]
    assert auroc(scores['expert'], scores['random']) == 1.0, scores  # 3 vs 3: no pair out of order

def test_another_estimator_rescores_without_retraining(tiny_roots, capsys):
    root = tiny_roots[1]
    suite(TINY.replace(compare=('one_pass', 'one_pass_likelihood')), root)
    out = capsys.readouterr().out
    assert '[tokenizer] done before, skipped' in out and '[eval] ...' in out

def test_a_stopped_scoring_stage_resumes_at_the_task_it_stopped(tiny_roots, tmp_path, monkeypatch, capsys):
    "Statistics and evaluation keep every task they finished: a rerun scores only the rest, to the same numbers."
    import shutil, diffusion_reward.report as report, diffusion_reward.reward as reward_mod
    root = tmp_path/'root'; shutil.copytree(tiny_roots[0], root)
    run = root/'seed0'
    before, stats_before = load_json(run/'eval.json'), load_json(run/'stages'/'stats.json')
    for f in ('stages/stats.json', 'stages/eval.json', 'eval.json'): (run/f).unlink()
    shutil.rmtree(run/'eval_tasks', ignore_errors=True)
    calls, score, relabel = [], report.evaluate_task, reward_mod.relabel_episodes
    def stop_at_second(*a, **k):
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt
        return score(*a, **k)
    monkeypatch.setattr(report, 'evaluate_task', stop_at_second)
    monkeypatch.setattr(reward_mod, 'relabel_episodes', lambda *a, **k: calls.append('stats') or relabel(*a, **k))
    with pytest.raises(KeyboardInterrupt): run_suite(TINY, root)
    assert not (run/'eval.json').exists() and 'stats' not in calls   # statistics of every task were kept
    calls.clear(); capsys.readouterr()
    monkeypatch.setattr(report, 'evaluate_task', lambda *a, **k: calls.append(1) or score(*a, **k))
    run_suite(TINY, root)
    assert len(calls) == 2 and 'scored before with these settings, kept' in capsys.readouterr().out  # 3 tasks, 1 kept
    after = load_json(run/'eval.json')
    assert before.pop('video_checkpoint') != after.pop('video_checkpoint') and before == after
    assert {k: v for k, v in load_json(run/'stages'/'stats.json').items() if k != 'seconds'} == \
           {k: v for k, v in stats_before.items() if k != 'seconds'}
    moved = tmp_path/'moved'; shutil.move(root, moved)  # scores are keyed by content: moving the folder keeps them
    for f in ('stages/eval.json', 'eval.json'): (moved/'seed0'/f).unlink()
    calls.clear(); capsys.readouterr()
    run_suite(TINY, moved)
    assert calls == [] and capsys.readouterr().out.count('scored before with these settings, kept') == 3
    assert load_json(moved/'seed0'/'eval.json')['tasks'] == after['tasks']

def test_what_limits_it_is_measured_per_task_and_seed(tiny_roots):
    "The tokenizer's PSNR and the video model's prediction on held-out episodes, beside each seed's judged AUROCs."
    ev = load_json(tiny_roots[0]/'seed0'/'eval.json')['tasks']
    psnr, pred = suite_tokenizer_psnr(TINY, tiny_roots[0], 2), suite_prediction_accuracy(TINY, tiny_roots[0], 2)
    assert set(psnr) == set(pred) == set(ev)
    for t, seeds in pred.items():
        p = seeds[0]
        judged = ev[t]['learned']['auroc_expert_vs_random']
        assert p['auroc_expert_vs_random'] == psnr[t][0]['auroc_expert_vs_random'] == judged
        assert 5 < psnr[t][0]['psnr'] < 60 and p['expert_x0_nll'] > 0 and p['random_x0_nll'] > 0
        for kind in ('expert', 'random'):
            assert 0 <= p[f'{kind}_acc_changed'] <= 1 and 0 <= p[f'{kind}_acc_allmask'] <= 1
        assert p['expert_acc_copy_last'] != p['random_acc_copy_last'] or p['expert_x0_nll'] != p['random_x0_nll']

def test_more_video_steps_train_the_stored_model_on(tiny_roots, tmp_path, capsys):
    "Raising video_steps continues a finished seed's video model: the numbers of training that long at once."
    import shutil
    root, more = tmp_path/'more', TINY.replace(video_steps=TINY.video_steps + 4)
    shutil.copytree(tiny_roots[0], root)
    run_suite(more, root)
    out = capsys.readouterr().out
    assert 'video_steps changed: training the video model on' in out and '[tokenizer] done before, skipped' in out
    summary = load_json(root/'seed0'/'video'/'summary.json')
    assert (summary['resumed_from'], summary['steps']) == (TINY.video_steps, more.video_steps)
    run_suite(more, tmp_path/'fresh')
    assert _numbers(load_json(root/'seed0'/'eval.json')) == _numbers(load_json(tmp_path/'fresh'/'seed0'/'eval.json'))
    with pytest.raises(ValueError, match=r'video_steps can only grow here \(10 -> 6\)'): run_suite(TINY, root)

def test_suite_options_fail_first_and_old_folders_resume(tiny_roots, tmp_path, capsys):
    "cond_frames sets the video model's history; a folder from before the option resumes; bad options fail first."
    import json, shutil
    from diffusion_reward.suite import suite_command
    k3 = TINY.replace(cond_frames=3)
    run_suite(k3, tmp_path/'k3')
    assert load_checkpoint(tmp_path/'k3'/'seed0'/'video'/'video_model.pt')['config']['num_cond_frames'] == 3
    assert suite_command(k3) == suite_command(TINY) + ' --cond_frames 3'
    old = tmp_path/'old'
    shutil.copytree(tiny_roots[0], old)
    cfg = load_json(old/'seed0'/'config.json'); del cfg['cond_frames']
    (old/'seed0'/'config.json').write_text(json.dumps(cfg))  # as written before the option existed
    capsys.readouterr(); run_suite(TINY, old)
    assert 'changed' not in capsys.readouterr().out
    with pytest.raises(ValueError, match='cond_frames differ'): run_suite(k3, old)
    with pytest.raises(ValueError, match='cond_frames must be >= 1'): run_suite(TINY.replace(cond_frames=0), tmp_path/'k0')
    with pytest.raises(ValueError, match="unknown preset 'pape'"): run_suite(TINY.replace(video_preset='pape'), tmp_path/'p')
    with pytest.raises(ValueError, match='drawer-open-v3: both a training and an unseen task'):
        run_suite(TINY.replace(train_tasks=('reach-v3', 'drawer-open-v3')), tmp_path/'leak')
    assert not any((tmp_path/n).exists() for n in ('k0', 'p', 'leak'))
    import inspect
    from diffusion_reward.suite import SUITE_OPTIONS, dr_suite
    assert set(SUITE_OPTIONS) <= set(inspect.signature(dr_suite).parameters)  # every option the card names is a flag

def test_training_another_task_keeps_every_other_tasks_episodes():
    "Seed blocks follow the domain preset's task list: an added training task moves no scored episode of another task."
    from diffusion_reward.suite import suite_plan
    key = lambda g: (g['task'], g['policy'], g['noise'], g['split'])
    mw = SuiteConfig.preset('metaworld')
    more = mw.replace(train_tasks=('faucet-close-v3', *mw.train_tasks))
    before, after = ({key(g): g['seed'] for g in suite_plan(c)} for c in (mw, more))
    assert all(after[k] == s for k, s in before.items()) and len(after) > len(before)
    assert len(set(after.values())) == len(after)  # no two groups share a seed
