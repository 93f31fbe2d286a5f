"""The reward benchmark's GPU script: a tiny CPU configuration in seconds here, the paper presets where CUDA is."""
import json, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT/'.ci'/'gpu_reward.sh'
ESTIMATORS = ['entropy', 'one_pass', 'likelihood', 'one_pass_likelihood']

def run_script(*args, timeout=600) -> subprocess.CompletedProcess:
    r = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r

def test_gpu_script_runs_tiny_on_cpu(tmp_path):
    "Every estimator on both batches, each with its ratio to the reference-style path timed in the same run."
    out = tmp_path/'bench.json'
    r = run_script('--preset', 'tiny', '--tokenizer_preset', 'tiny', '--frames', '10,40', '--device', 'cpu',
                   '--out', str(out), timeout=300)
    assert '## eager' in r.stdout and '## compiled' not in r.stdout
    assert r.stdout.count('| path | rewards | rewards/s | vs reference |') == 1
    res = json.loads(out.read_text())
    assert res['device'] == 'cpu' and res['preset'] == 'tiny' and res['machine']['cores'] >= 1
    rows = {(row['path'], row['rewards']): row for row in res['rows']}
    assert set(rows) == {(p, n) for p in ['reference-style entropy', *ESTIMATORS] for n in (10, 40)}
    for (path, n), row in rows.items():
        assert row['rewards_per_s'] > 0 and row['rewards_per_cpu_s'] > 0
        if path in ESTIMATORS: assert row['vs_reference'] > 0 and res[f'{path}_{n}_vs_reference'] == row['vs_reference']
    assert f"| one_pass | 40 | {rows[('one_pass', 40)]['rewards_per_s']:.4g} |" in r.stdout

def test_gpu_script_rejects_unknown_estimator():
    r = subprocess.run([str(SCRIPT), '--preset', 'tiny', '--tokenizer_preset', 'tiny', '--frames', '10',
                        '--device', 'cpu', '--estimators', 'nope'], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode != 0 and "estimator must be one of" in r.stderr

@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_script_paper_presets(tmp_path):
    "On a GPU: every estimator at the paper presets on 100 and 4000 frames is faster than the reference-style path."
    out = tmp_path/'bench.json'
    r = run_script('--out', str(out), timeout=1800)
    print(r.stdout)
    res = json.loads(out.read_text())
    assert res['precision'] == 'bf16' and res['compile'] is True
    for row in res['rows']:
        if row['path'] in ESTIMATORS: assert row['vs_reference'] > 1, row
