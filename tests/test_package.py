"Package-level checks: every module imports in a fresh interpreter; README and CI agree."
import re, subprocess, sys
import pytest
from conftest import ROOT

MODULES = sorted(p.stem for p in (ROOT/'diffusion_reward').glob('*.py') if not p.stem.startswith('_'))

@pytest.mark.parametrize('module', MODULES)
def test_module_imports_in_fresh_interpreter(module):
    "Catches exported code that leaned on notebook globals."
    r = subprocess.run([sys.executable, '-c', f'import diffusion_reward.{module}'], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]

def test_ci_runs_the_readme_test_command():
    readme, ci = (ROOT/'README.md').read_text(), (ROOT/'.ci'/'run').read_text()
    cmd = re.search(r'^(bash \.ci/setup\.sh --dev && bash \.ci/test\.sh)', readme, re.M)
    assert cmd, 'README must give the test command'
    assert cmd.group(1) in ci.splitlines()

def test_readme_in_sync_with_index_notebook():
    r = subprocess.run([sys.executable, str(ROOT/'.ci'/'readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

def test_console_scripts_resolve():
    "Every console script in settings.ini points at a function that exists."
    import configparser, importlib
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    for entry in cfg['DEFAULT']['console_scripts'].split():
        name, target = entry.split('=')
        mod, fn = target.split(':')
        assert callable(getattr(importlib.import_module(mod), fn)), name
