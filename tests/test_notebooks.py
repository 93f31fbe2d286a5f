"""One test per notebook: run it as `nbdev_test` does, slow and gpu cells skipped unless asked for; and the
stored-output check of `.ci/notebooks.py` on throw-away notebooks."""
import json, subprocess, sys
import pytest, torch
import nbdev.test as nbt
from conftest import ROOT, RUN_ELSEWHERE

NOTEBOOKS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb, request):
    runslow = request.config.getoption('--runslow')
    if nb.stem in RUN_ELSEWHERE and not runslow:
        missing, where = RUN_ELSEWHERE[nb.stem]
        if missing() is None: pytest.skip(f'{nb.name} runs top to bottom in {where}')
    skip = {'slow', 'gpu'}
    if runslow: skip.discard('slow')
    if torch.cuda.is_available(): skip.discard('gpu')
    ok, secs = nbt.test_nb(nb, skip_flags=sorted(skip))
    assert ok, f'{nb.name} failed (see the traceback above)'

def _nb(*sources) -> dict:
    cells = [dict(cell_type='code', id=f'{i:08x}', metadata={}, execution_count=None, outputs=[], source=s)
             for i, s in enumerate(sources)]
    return dict(cells=cells, metadata={}, nbformat=4, nbformat_minor=5)

def _script(folder, *args):
    return subprocess.run([sys.executable, str(ROOT/'.ci'/'notebooks.py'), '--nbs', str(folder), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)

def test_stored_outputs_check(tmp_path):
    "`run` stores outputs (slow cells keep theirs); `check` passes, then names the notebook once a cell changes."
    path = tmp_path/'01_toy.ipynb'
    nb = _nb('x = 6 * 7\nx', '#| slow\nraise RuntimeError("slow cells do not run")')
    nb['cells'][1]['outputs'] = [dict(output_type='stream', name='stdout', text=['kept\n'])]
    path.write_text(json.dumps(nb))
    r = _script(tmp_path, 'check')
    assert r.returncode == 1 and '01_toy.ipynb: outputs never stored' in r.stdout
    r = _script(tmp_path, 'run')
    assert r.returncode == 0, r.stdout + r.stderr
    cells = json.loads(path.read_text())['cells']
    assert cells[0]['outputs'][0]['data']['text/plain'] == ['42'] and cells[1]['outputs'][0]['text'] == ['kept\n']
    assert _script(tmp_path, 'check').returncode == 0
    nb = json.loads(path.read_text()); nb['cells'][0]['source'] = 'x = 6 * 9\nx'; path.write_text(json.dumps(nb))
    r = _script(tmp_path, 'check')
    assert r.returncode == 1 and '01_toy.ipynb: code cells changed' in r.stdout and 'notebooks.py run' in r.stdout

def test_check_refuses_cdn_scripts_and_errors(tmp_path):
    path = tmp_path/'02_web.ipynb'
    path.write_text(json.dumps(_nb('1')))
    assert _script(tmp_path, 'run').returncode == 0
    nb = json.loads(path.read_text())
    nb['cells'][0]['outputs'] = [dict(output_type='display_data', metadata={}, data={
        'text/html': ['<script src="https://cdn.plot.ly/plotly-2.35.2.min.js"></script>']}),
        dict(output_type='error', ename='ValueError', evalue='x', traceback=[])]
    path.write_text(json.dumps(nb))
    r = _script(tmp_path, 'check')
    assert r.returncode == 1 and 'CDN' in r.stdout and 'holds an error' in r.stdout
