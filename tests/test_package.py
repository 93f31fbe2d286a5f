"Package-level checks: every module imports in a fresh interpreter; README and CI agree."
import json, os, re, subprocess, sys
import pytest
from conftest import ROOT

MODULES = sorted(p.stem for p in (ROOT/'diffusion_reward').glob('*.py') if not p.stem.startswith('_'))

# One interpreter imports torch and numpy once, then forks a child per module; each child starts with no module of
# the package loaded, so a module that leans on a name it never imported fails there as in a fresh interpreter.
FORK_IMPORTS = r"""
import json, os, sys, traceback
import numpy, torch
found = {}
for module in sys.argv[1:]:
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r)
        try: __import__(f'diffusion_reward.{module}'); err = ''
        except BaseException: err = traceback.format_exc()
        os.write(w, err.encode()); os._exit(0)
    os.close(w)
    with os.fdopen(r) as f: found[module] = f.read()
    os.wait()
print('IMPORTS ' + json.dumps(found))
"""

@pytest.fixture(scope='module')
def fresh_imports() -> dict:
    "module -> traceback of importing it in a fresh process ('' when it imported)."
    r = subprocess.run([sys.executable, '-c', FORK_IMPORTS, *MODULES], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 0 and 'IMPORTS ' in r.stdout, r.stderr[-3000:]
    return json.loads(r.stdout.split('IMPORTS ', 1)[1])

@pytest.mark.parametrize('module', MODULES)
def test_module_imports_in_fresh_interpreter(module, fresh_imports):
    "Catches exported code that leaned on notebook globals."
    assert fresh_imports[module] == '', fresh_imports[module][-3000:]

def test_ci_runs_the_readme_test_command(tmp_path):
    "`.ci/run` executes exactly the README's test command: run it with a `bash` on PATH that only records its calls."
    readme = (ROOT/'README.md').read_text()
    m = re.search(r'^(bash \.ci/setup\.sh --dev && bash \.ci/test\.sh)\b', readme, re.M)
    assert m, 'README must give the test command'
    expected = [part.split()[1:] for part in m.group(1).split('&&')]     # each part: bash SCRIPT ARGS
    for script in ('.ci/run', *(args[0] for args in expected)):
        r = subprocess.run(['/bin/bash', '-n', str(ROOT/script)], capture_output=True, text=True)
        assert r.returncode == 0, f'{script}: {r.stderr}'
    log, fake = tmp_path/'calls', tmp_path/'bin'/'bash'
    fake.parent.mkdir(); fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n'); fake.chmod(0o755)
    env = dict(os.environ, PATH=f'{fake.parent}:{os.environ["PATH"]}')
    r = subprocess.run(['/bin/bash', str(ROOT/'.ci'/'run')], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert [line.split() for line in log.read_text().splitlines()] == expected

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
