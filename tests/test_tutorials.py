"""The tutorials as a new user meets them: one tutorial run top to bottom in "Colab mode" (a fresh virtual environment
that gets the package from a wheel built here, a stand-in `google.colab` module, the notebook's own first cell doing
the installs), and `dr_reward_video` from a terminal. Each tutorial's cells also run in `test_notebooks.py`."""
import json, os, re, shutil, subprocess, sys, zipfile
from pathlib import Path
import pytest
from conftest import ROOT, SHIPPED, colab_mode_missing, run_cli

TUTORIALS = sorted((ROOT/'nbs').glob('8?_tutorial_*.ipynb'))
COLAB_TUTORIAL = ROOT/'nbs'/'81_tutorial_own_videos.ipynb'  # the quickest one that installs, renders and scores
BUILD_FILES = ('setup.py', 'settings.ini', 'pyproject.toml', 'MANIFEST.in', 'README.md', 'LICENSE')

def _code(nb) -> list: return [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'code']

@pytest.mark.parametrize('nb', TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_opens_in_colab(nb):
    "A badge that opens this very notebook in Colab; a first code cell that only acts on Colab; no forced renderer."
    cells = json.loads(nb.read_text())['cells']
    link = f'https://colab.research.google.com/github/diffusion-reward/diffusion-reward/blob/main/nbs/{nb.name}'
    assert f'[**Open in Colab**]({link})' in ''.join(cells[0]['source']), f'{nb.name}: no Colab link in its title cell'
    first = _code(json.loads(nb.read_text()))[0]
    assert "find_spec('google.colab') is not None" in first and 'DR_COLAB_PACKAGE' in first
    assert not any('renderers.default' in src for src in _code(json.loads(nb.read_text())))

# ---------------------------------------------------------------- Colab mode
RUNNER = r'''
"Run a notebook's code cells in order as a Colab user would (slow and gpu cells left out); write a JSON report."
import json, re, sys
from execnb.shell import CaptureShell
nb, report = json.load(open(sys.argv[1])), []
sh = CaptureShell()
for src in [''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'code']:
    if re.search(r'^#\|\s*(slow|gpu)\b', src, re.M) or 'nbdev_export(' in src: continue
    outs = sh.run(src)
    text = ''.join(''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', '')) for o in outs)
    report.append(dict(src=src[:200], text=text[-3000:], error=None if sh.exc is None else repr(sh.exc)))
    if sh.exc is not None: break
sh.run("import os, shutil, diffusion_reward\n"
       "_where = dict(package=diffusion_reward.__file__, cli=shutil.which('dr_reward_video'),\n"
       "              mujoco_gl=os.environ.get('MUJOCO_GL'))")
report.append(dict(where=sh.user_ns.get('_where')))
json.dump(report, open(sys.argv[2], 'w'), indent=1)
'''

def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)

def _unable(why):
    "Skip where this machine lacks what Colab mode needs; fail where it has it (the 81 notebook test left it to us)."
    if missing := colab_mode_missing(): pytest.skip(f'{why} ({missing})')
    pytest.fail(why)

@pytest.fixture(scope='module')
def colab_venv(tmp_path_factory):
    "A fresh venv (system site packages visible: torch and the other requirements are not downloaded again) and a "
    "wheel of the package built from a clean copy of its sources."
    tmp = tmp_path_factory.mktemp('colab')
    src = tmp/'src'; src.mkdir()
    for f in BUILD_FILES:
        if (ROOT/f).exists(): shutil.copy2(ROOT/f, src/f)
    shutil.copytree(ROOT/'diffusion_reward', src/'diffusion_reward', ignore=shutil.ignore_patterns('__pycache__'))
    r = _run([sys.executable, '-m', 'venv', '--system-site-packages', str(tmp/'venv')], timeout=120)
    if r.returncode: _unable(f'cannot create a virtual environment here: {r.stderr.strip()[-300:]}')
    r = _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp/'wheel'),
              str(src)], timeout=300)
    wheels = list((tmp/'wheel').glob('diffusion_reward-*.whl'))
    if r.returncode or not wheels: _unable(f'cannot build a wheel here: {r.stderr.strip()[-300:]}')
    stub = tmp/'stub'/'google'/'colab'; stub.mkdir(parents=True)  # `google` stays a namespace package (protobuf)
    (stub/'__init__.py').write_text('"Stand-in for Colab\'s module: the tutorials only ask whether it exists."\n')
    return dict(tmp=tmp, python=tmp/'venv'/'bin'/'python', wheel=wheels[0], stub=tmp/'stub')

def test_wheel_ships_the_pretrained_model_and_the_command(colab_venv):
    names = zipfile.ZipFile(colab_venv['wheel']).namelist()
    assert 'diffusion_reward/explore.py' in names
    assert any('dr_reward_video = diffusion_reward.explore:dr_reward_video' in zipfile.ZipFile(colab_venv['wheel'])
               .read(n).decode() for n in names if n.endswith('entry_points.txt'))
    for model in sorted(SHIPPED.parents[1].glob('*/video_model.pt')):  # every shipped model, MetaWorld and Adroit
        missing = [f for f in ('video_model.pt', 'tokenizer.pt', 'reward_stats.json', 'MODEL_CARD.md')
                   if f'diffusion_reward/pretrained/{model.parent.name}/{f}' not in names]
        assert not missing, f'the wheel lacks the shipped model files {missing} (MANIFEST.in / package_data)'

def test_tutorial_in_colab_mode(colab_venv):
    "The own-videos tutorial in a fresh venv: its first cell installs the wheel, then every cell runs."
    if not SHIPPED.exists():
        standin = Path(os.environ.get('DR_TINY_MODEL') or Path.home()/'.cache'/'diffusion_reward'/'tiny')
        if not (standin/'video_model.pt').exists():
            pytest.skip('no shipped MetaWorld model yet and no tiny stand-in cached (explore.tiny_standin)')
    tmp, venv_bin = colab_venv['tmp'], colab_venv['python'].parent
    run = tmp/'run'; run.mkdir()
    shutil.copy2(COLAB_TUTORIAL, run/COLAB_TUTORIAL.name)
    (run/'runner.py').write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k not in ('MUJOCO_GL', 'PYOPENGL_PLATFORM', 'PYTHONPATH')}
    env.update(PYTHONPATH=str(colab_venv['stub']), DR_COLAB_PACKAGE=str(colab_venv['wheel']), DR_NO_PROGRESS='1',
               PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv_bin.parent), MPLBACKEND='Agg')
    r = _run([str(colab_venv['python']), 'runner.py', COLAB_TUTORIAL.name, 'report.json'], cwd=run, env=env,
             timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    report = json.loads((run/'report.json').read_text())
    failed = [c for c in report[:-1] if c['error']]
    assert not failed, f"cell failed in Colab mode:\n{failed[0]['src']}\n{failed[0]['error']}\n{failed[0]['text']}"
    import torch
    gl = 'egl' if torch.cuda.is_available() else 'osmesa'
    assert f'installed; MuJoCo renders with {gl}' in report[0]['text'], report[0]
    site, where = tmp/'venv'/'lib', report[-1]['where']
    assert where['mujoco_gl'] == gl, where
    assert where['package'].startswith(str(site)), f"the kernel imported {where['package']}, not the venv's wheel"
    assert where['cli'] and where['cli'].startswith(str(venv_bin)), where
    assert not list(site.glob('python*/site-packages/torch')), "pip replaced the runtime's torch"
    assert len(report) - 1 == len([s for s in _code(json.loads(COLAB_TUTORIAL.read_text()))
                                   if not re.search(r'^#\|\s*(slow|gpu)\b', s, re.M)])

# ---------------------------------------------------------------- dr_reward_video
def _cli(*args, **kw):
    return run_cli(['dr_reward_video', *map(str, args)], timeout=300, **kw)

def test_reward_video_cli_refuses_bad_input_in_one_line(tmp_path):
    r = _cli(tmp_path/'nope.mp4')
    assert r.returncode == 2 and r.stderr.strip() == f'dr_reward_video: error: {tmp_path/"nope.mp4"}: does not exist'
    (tmp_path/'bad.mp4').write_text('not a video')
    r = _cli(tmp_path/'bad.mp4', '--model', tmp_path/'video_model.pt')
    assert r.returncode == 2 and r.stderr.strip().endswith('video_model.pt: does not exist')
    r = _cli(tmp_path/'bad.mp4', '--model', 'no-such-model')
    assert r.returncode == 2 and "unknown pretrained reward model 'no-such-model'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

def test_reward_video_cli_writes_csv_and_plot(tmp_path):
    "A PNG folder of another size in, CSV and plot out; the same numbers as `explore.reward_video` in Python."
    import numpy as np, imageio.v3 as iio
    from diffusion_reward.test_utils import synthetic_episodes
    from diffusion_reward.explore import open_reward, reward_video
    model = str(SHIPPED) if SHIPPED.exists() else os.environ.get('DR_TINY_MODEL')
    if not model or not Path(model).exists(): pytest.skip('no shipped MetaWorld model and no DR_TINY_MODEL to use')
    frames = np.repeat(np.repeat(synthetic_episodes(1, 9, seed=0)[0], 2, 1), 2, 2)   # 9 frames of 128x128
    (tmp_path/'clip').mkdir()
    for i, f in enumerate(frames): iio.imwrite(tmp_path/'clip'/f'{i}.png', f)
    r = _cli(tmp_path/'clip', '--model', model, '--out', tmp_path/'out', '--every', 2)
    assert r.returncode == 0, r.stderr
    assert 'note: kept 1 frame in 2: 5 of 9' in r.stdout and 'note: resized 128x128 frames to 64x64' in r.stdout
    rows = (tmp_path/'out'/'clip_rewards.csv').read_text().splitlines()
    assert rows[0] == 'frame,video_frame,reward,raw_reward' and len(rows) == 5 and rows[-1].startswith('4,8,')
    assert (tmp_path/'out'/'clip_rewards.png').read_bytes()[:4] == b'\x89PNG'
    py = reward_video(open_reward(model), tmp_path/'clip', out=tmp_path/'py', every=2)['rewards']
    assert np.allclose([float(x.split(',')[2]) for x in rows[1:]], py, atol=1e-4)
