import os
os.environ.setdefault('MUJOCO_GL', 'egl')
os.environ.setdefault('PYOPENGL_PLATFORM', os.environ['MUJOCO_GL'])
os.environ.setdefault('DR_NO_PROGRESS', '1')
if os.environ.get('PYTEST_XDIST_WORKER'):  # one thread per worker (and its subprocesses): OpenMP threads of two
    os.environ['OMP_NUM_THREADS'] = '1'     # workers sharing the cores wait at barriers for descheduled peers
import importlib.util, shutil
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
