import os
os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('PYOPENGL_PLATFORM', os.environ['MUJOCO_GL'])
os.environ.setdefault('DR_NO_PROGRESS', '1')
if os.environ.get('PYTEST_XDIST_WORKER'):  # one thread per worker (and its subprocesses): OpenMP threads of two
    os.environ['OMP_NUM_THREADS'] = '1'     # workers sharing the cores wait at barriers for descheduled peers
import functools, importlib.util, shutil, subprocess, sys, tempfile
import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent/'shared'

def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', help='also run tests and notebook cells marked slow')

# module-scoped fixtures that train or build something: with pytest-xdist (`-n 2 --dist loadgroup`, as .ci/test.sh
# runs) the tests using one of them run on one worker, so it is built once
SHARED_FIXTURES = {'docs', 'site', 'tiny_run', 'expert_dir', 'tiny_roots', 'colab_venv', 'episodes_and_tokenizer',
                   'tiny_models', 'tiny_door_models', 'fresh_imports'}

def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: long test, run with --runslow')
    config.addinivalue_line('markers', 'gpu: needs a CUDA device')
    config.addinivalue_line('markers', 'xdist_group(name): tests that pytest-xdist keeps on one worker')
    if os.environ.get('PYTEST_XDIST_WORKER'):
        import torch; torch.set_num_threads(1)

@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    import torch
    for item in items:
        if SHARED_FIXTURES & set(getattr(item, 'fixturenames', ())):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
        if 'slow' in item.keywords and not config.getoption('--runslow'):
            item.add_marker(pytest.mark.skip(reason='slow: run with --runslow'))
        if 'gpu' in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason='needs a CUDA device'))

# --- commands as a user runs them, without paying for a fresh interpreter each time

def _cli_child(argv:list, env:dict, cwd:str, out:str, err:str):
    "In a child forked from the warm interpreter: run `python *argv` as a fresh interpreter would, output to two files."
    import atexit, runpy, traceback
    os.environ.clear(); os.environ.update(env); os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC); os.dup2(f, fd); os.close(f)
    code = 0
    try:
        loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'diffusion_reward')
        if loaded: raise RuntimeError(f'the warm interpreter has loaded {loaded}: the command would not start fresh')
        if argv[0] == '-m': sys.argv = list(argv[1:]); runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
        else: sys.argv = list(argv); runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
        if isinstance(e.code, str): print(e.code, file=sys.stderr)
    except BaseException: traceback.print_exc(); code = 1
    atexit._run_exitfuncs()  # what interpreter shutdown would run: log writers closing, progress bars ending
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code)

def _python_argv(cmd:list):
    "The arguments after `python` that `cmd` amounts to (a console script, `python -m mod`, `python x.py`), else None."
    if cmd[0] == sys.executable: return list(cmd[1:]) if cmd[1:2] != ['-c'] else None
    exe = shutil.which(cmd[0])
    if exe and Path(exe).parent == Path(sys.executable).parent:
        with open(exe, 'rb') as f: first = f.readline()
        if first.startswith(b'#!') and b'python' in first: return [exe, *cmd[1:]]

@functools.cache
def _forkserver():
    "The forkserver context; its server (started on first use, one per test worker) has imported torch once."
    import multiprocessing as mp
    ctx = mp.get_context('forkserver'); ctx.set_forkserver_preload(['torch', 'conftest'])
    return ctx

def run_cli(cmd:list, env:dict=None, cwd=None, timeout:float=600) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True, ...)` for the package's commands, each in a child forked from
    one interpreter per test worker that imported torch and no module of the package (2-3 s of start-up saved a call);
    anything else (shell scripts, `python -c`) runs as a plain subprocess."""
    argv = _python_argv(list(map(str, cmd)))
    if argv is None: return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = f'{tmp}/out', f'{tmp}/err'
        p = _forkserver().Process(target=_cli_child, args=(argv, dict(os.environ if env is None else env),
                                                          str(cwd or os.getcwd()), out, err))
        p.start(); p.join(timeout)
        timed_out = p.is_alive()
        if timed_out: p.kill(); p.join()
        read = lambda f: Path(f).read_text(errors='replace') if Path(f).exists() else ''
        if timed_out: raise subprocess.TimeoutExpired(cmd, timeout, read(out), read(err))
        return subprocess.CompletedProcess(cmd, p.exitcode, read(out), read(err))

@pytest.fixture(scope='session')
def dapg_dir():
    "The public DAPG Adroit policies beside the checkout (../shared/data/adroit_dapg)."
    d = SHARED/'data'/'adroit_dapg'
    if not (d/'door-v0.pickle').exists(): pytest.skip(f'DAPG policy files not found at {d}')
    return d

def chromium_path():
    "Debian's chromium (or DR_CHROMIUM); Playwright drives it through `executable_path`, no browser download."
    for c in (os.environ.get('DR_CHROMIUM'), shutil.which('chromium'), shutil.which('chromium-browser'), '/usr/bin/chromium'):
        if c and Path(c).exists(): return c

SHIPPED = ROOT/'diffusion_reward'/'pretrained'/'metaworld'/'video_model.pt'  # the shipped MetaWorld reward model

def browser_missing():
    "Why headless chromium through Playwright cannot run here (None when it can)."
    if not chromium_path(): return 'no chromium: `apt-get install chromium` (or set DR_CHROMIUM); never `playwright install`'
    if importlib.util.find_spec('playwright') is None:
        return 'playwright (pip) drives chromium: `bash .ci/setup.sh --dev`'

def jupyterlab_missing():
    "Why the JupyterLab tests cannot run here (None when they can): JupyterLab 4, Playwright and a chromium."
    if importlib.util.find_spec('jupyterlab') is None: return 'jupyterlab is not installed (`bash .ci/setup.sh --dev`)'
    import jupyterlab
    if int(jupyterlab.__version__.split('.')[0]) < 4: return f'needs JupyterLab 4, found {jupyterlab.__version__}'
    return browser_missing()

def colab_mode_missing():
    "Why the Colab-mode test cannot run here (None when it can): a venv with pip and a wheel builder, a shipped model."
    if importlib.util.find_spec('ensurepip') is None: return 'no venv with pip here (Debian: `apt-get install python3-venv`)'
    if importlib.util.find_spec('setuptools') is None: return 'setuptools is not installed: cannot build a wheel'
    if not SHIPPED.exists(): return 'no shipped model'

# notebooks another test runs top to bottom as a user meets them (the same cells, slow ones left out): where that
# test can run here, `test_notebooks.py` does not run them a second time
RUN_ELSEWHERE = {'80_tutorial_landscape': (jupyterlab_missing, 'JupyterLab: tests/test_jupyterlab.py'),
                 '81_tutorial_own_videos': (colab_mode_missing, 'Colab mode: tests/test_tutorials.py')}

@pytest.fixture(scope='session')
def browser():
    "Headless chromium through Playwright; skips with the install command when either is missing."
    if why := browser_missing(): pytest.skip(why)
    exe = chromium_path()
    import playwright.sync_api as sync_api
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=['--no-sandbox'])
        try: yield b
        finally: b.close()
