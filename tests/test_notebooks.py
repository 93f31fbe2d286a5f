"One test per notebook: run it as `nbdev_test` does, slow and gpu cells skipped unless asked for."
import pytest, torch
import nbdev.test as nbt
from conftest import ROOT

NOTEBOOKS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith('_'))

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook(nb, request):
    skip = {'slow', 'gpu'}
    if request.config.getoption('--runslow'): skip.discard('slow')
    if torch.cuda.is_available(): skip.discard('gpu')
    ok, secs = nbt.test_nb(nb, skip_flags=sorted(skip))
    assert ok, f'{nb.name} failed (see the traceback above)'
