"""Re-execute the notebooks and store their outputs; check cheaply that the stored outputs are current.

    python .ci/notebooks.py run [NB ...] [--slow]   execute notebooks (default: every nbs/*.ipynb not starting with `_`)
    python .ci/notebooks.py check                   exit 1, one line per problem, when stored outputs are stale

`run` executes each notebook in a fresh process with execnb's `CaptureShell` (working directory nbs/, as
`nbdev_test`), skipping the export cell and cells flagged `#| slow` or `#| gpu` (their stored outputs are kept;
`--slow` runs slow cells too, gpu cells run where CUDA is available), writes the outputs into the notebook, runs
`nbdev_clean` on it and records in nbs/outputs.json, per notebook:
  cells    hash of the notebook's code-cell sources (all of them, in order) when its outputs were made;
  kept     per skipped cell that holds outputs, the hash of its source when those outputs were made;
  library  hash of the sources of the `diffusion_reward` modules the notebook imports, and their names.
Plotly figures go through the mimetype renderer (PLOTLY_RENDERER=plotly_mimetype, what a Jupyter kernel uses);
matplotlib figures are stored as PNG; progress bars are off (DR_NO_PROGRESS=1).

`check` executes nothing. It fails when a notebook has never been run by `run`, when its code cells differ from the
recorded hash, when a kept (slow/gpu) output came from an older version of its cell, when a notebook holds no
output at all or a stored error, when the file exceeds 1.5 MB, or when an HTML output loads a script from the
network (`<script src="http...`: a CDN renderer that breaks offline). Notebooks of prose only (index) are exempt.

Why library drift does not fail the check: every notebook's export cells are library code, so failing whenever an
imported module changed would mark every downstream notebook stale on each edit anywhere (core is imported by all)
and make each commit re-run every notebook (many CPU-minutes on the 2-core machine), mostly for changes that do not
move an output. The notebook's own cells are what its outputs show, so they decide; library drift is printed as a
note naming the notebooks to refresh when convenient.
"""
from __future__ import annotations
import hashlib, json, os, re, subprocess, sys, tempfile, time, traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_500_000
SKIP_FLAGS = {'slow', 'gpu'}
CDN = re.compile(r'<script[^>]*\bsrc=["\']?https?:', re.I)

def _src(cell) -> str: return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']
def _sha(text:str) -> str: return hashlib.sha256(text.encode()).hexdigest()[:16]
def _code(nb) -> list: return [c for c in nb['cells'] if c['cell_type'] == 'code']

def flags(src:str) -> set:
    "Directive words of a cell (`#| slow`, `#| eval: false` -> {'slow', 'eval:false'})."
    out = set()
    for line in src.splitlines():
        m = re.match(r'\s*#\s*\|\s*(.*)', line)
        if not m:
            if line.strip(): break
            continue
        words = m.group(1).replace(': ', ':').split()
        out |= {w.lower() for w in words}
    return out

def is_export_call(src:str) -> bool: return 'nbdev_export(' in src

def cells_hash(nb:dict) -> str: return _sha(json.dumps([_src(c) for c in _code(nb)]))

def library_hash(nb:dict, lib:Path) -> tuple[str, list]:
    "Hash of the diffusion_reward modules the notebook's code imports (names sorted)."
    text = '\n'.join(_src(c) for c in _code(nb))
    names = sorted({m for m in re.findall(r'diffusion_reward\.(\w+)', text) if (lib/f'{m}.py').exists()})
    return _sha(''.join(n + (lib/f'{n}.py').read_text() for n in names)), names

def load_nb(path:Path) -> dict: return json.loads(path.read_text())

def save_nb(nb:dict, path:Path):
    tmp = path.with_suffix('.ipynb.tmp')
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    os.replace(tmp, path)

def notebooks(nbs:Path, names:list) -> list[Path]:
    if not names: return sorted(p for p in nbs.glob('*.ipynb') if not p.name.startswith('_'))
    out = []
    for n in names:
        p = Path(n)
        p = p if p.exists() else nbs/p.name if (nbs/p.name).exists() else nbs/f'{p.name}.ipynb'
        if not p.exists(): sys.exit(f'{n}: no such notebook')
        out.append(p.resolve())
    return out

# ---------------------------------------------------------------- run
def execute(path:Path, slow:bool) -> dict:
    "Run one notebook's cells in this process; returns {cell id: outputs} of the cells that ran (raises on error)."
    os.environ.setdefault('PLOTLY_RENDERER', 'plotly_mimetype')
    os.environ['DR_NO_PROGRESS'] = '1'
    os.environ.setdefault('MUJOCO_GL', 'egl'); os.environ.setdefault('PYOPENGL_PLATFORM', os.environ['MUJOCO_GL'])
    from execnb.shell import CaptureShell
    nb = load_nb(path)
    os.chdir(path.parent)
    shell = CaptureShell(path.parent, mpl_format='png')
    skip, ran = SKIP_FLAGS - ({'slow'} if slow else set()), {}
    import torch
    if torch.cuda.is_available(): skip.discard('gpu')
    for i, cell in enumerate(_code(nb)):
        src, f = _src(cell), flags(_src(cell))
        if is_export_call(src): ran[cell['id']] = []; continue
        if f & skip or 'eval:false' in f: continue
        outs = shell.run(src)
        if shell.exc is not None:
            raise RuntimeError(f'{path.name}, code cell {i} (id {cell.get("id")}):\n' + ''.join(
                traceback.format_exception(type(shell.exc), shell.exc, shell.exc.__traceback__)))
        ran[cell['id']] = [dict(o) for o in outs if o.get('data') != {}]  # plotly leaves an empty result
    return ran

def store(path:Path, executed_src:dict, ran:dict, record:dict, library:tuple) -> dict:
    "Merge outputs into the notebook as it is now (refusing if its code changed meanwhile); returns its record."
    nb = load_nb(path)
    now = {c['id']: _src(c) for c in _code(nb)}
    if now != executed_src: raise RuntimeError(f'{path.name} was edited while it ran: run it again')
    old_kept, kept = record.get('kept', {}), {}
    for cell in _code(nb):
        cid, src = cell['id'], _src(cell)
        if cid in ran:
            cell['outputs'], cell['execution_count'] = ran[cid], None
            if flags(src) & SKIP_FLAGS and cell['outputs']: kept[cid] = _sha(src)
        elif cell.get('outputs'):  # a skipped cell: keep its outputs unless they came from an older version of it
            if old_kept.get(cid, _sha(src)) == _sha(src): kept[cid] = _sha(src)
            else:
                print(f'  {path.name}: cleared stale outputs of skipped cell {cid} (run with --slow to refresh them)')
                cell['outputs'] = []
    save_nb(nb, path)
    subprocess.run(['nbdev_clean', '--fname', str(path)], check=True, cwd=ROOT)
    return dict(cells=cells_hash(load_nb(path)), kept=kept, library=library[0], modules=library[1])

def cmd_run(paths:list, slow:bool, nbs:Path, lib:Path) -> int:
    index_path = nbs/'outputs.json'
    failed = []
    for p in paths:
        t0 = time.time()
        nb = load_nb(p)
        src, library = {c['id']: _src(c) for c in _code(nb)}, library_hash(nb, lib)  # as they are when it runs
        res_file = Path(tempfile.mkstemp(suffix='.json')[1])
        r = subprocess.run([sys.executable, __file__, '_exec', str(p), str(res_file)] + (['--slow'] if slow else []))
        try:
            if r.returncode != 0: raise RuntimeError(f'{p.name} failed (traceback above)')
            ran = json.loads(res_file.read_text())
            index = json.loads(index_path.read_text()) if index_path.exists() else {}
            index[p.name] = store(p, src, ran, index.get(p.name, {}), library)
            index_path.write_text(json.dumps(dict(sorted(index.items())), indent=1) + '\n')
            print(f'{p.name}: outputs stored ({time.time() - t0:.0f} s, {p.stat().st_size / 1e3:.0f} kB)', flush=True)
        except Exception as e:
            print(f'{p.name}: NOT stored: {e}', file=sys.stderr); failed.append(p.name)
        finally: res_file.unlink(missing_ok=True)
    if failed: print(f'failed: {", ".join(failed)}', file=sys.stderr)
    return 1 if failed else 0

# ---------------------------------------------------------------- check
def problems(path:Path, rec:dict|None, refresh:str) -> list[str]:
    "What is wrong with the stored outputs of one notebook (empty: current)."
    nb, out = load_nb(path), []
    if not any(not is_export_call(_src(c)) for c in _code(nb)): return out  # prose only: nothing to run
    if path.stat().st_size > MAX_BYTES:
        out.append(f'{path.stat().st_size / 1e6:.1f} MB, over {MAX_BYTES / 1e6} MB: shrink its outputs')
    if rec is None: out.append(f'outputs never stored by this script: {refresh}')
    elif rec['cells'] != cells_hash(nb): out.append(f'code cells changed since its outputs were stored: {refresh}')
    outputs = [(c, o) for c in _code(nb) for o in c.get('outputs', [])]
    if not outputs and rec is not None: out.append(f'holds no output at all: {refresh}')
    for c, o in outputs:
        if o.get('output_type') == 'error': out.append(f'cell {c["id"]} holds an error: {refresh}')
        html = o.get('data', {}).get('text/html', '')
        if CDN.search(''.join(html) if isinstance(html, list) else html):
            out.append(f'cell {c["id"]} loads a script from the network (CDN renderer): render offline')
        if rec is not None and flags(_src(c)) & SKIP_FLAGS and (rec.get('kept') or {}).get(c['id']) != _sha(_src(c)):
            out.append(f'skipped cell {c["id"]} holds outputs of an older version of it: {refresh} --slow')
    return out

def cmd_check(nbs:Path, lib:Path) -> int:
    index_path = nbs/'outputs.json'
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    bad, drift = 0, []
    for p in notebooks(nbs, []):
        rel = os.path.relpath(p, ROOT) if p.is_relative_to(ROOT) else str(p)
        refresh = f'run `python .ci/notebooks.py run {rel}`'
        for msg in problems(p, index.get(p.name), refresh):
            print(f'{rel}: {msg}'); bad += 1
        rec = index.get(p.name)
        if rec and library_hash(load_nb(p), lib)[0] != rec['library']: drift.append(p.stem)
    if drift:
        print(f'note (not an error): library modules imported by {", ".join(drift)} changed since their outputs '
              'were stored')
    return 1 if bad else 0

def main(argv:list) -> int:
    nbs, lib = ROOT/'nbs', ROOT/'diffusion_reward'
    if '--nbs' in argv:  # another notebook folder (tests)
        i = argv.index('--nbs'); nbs = Path(argv[i + 1]).resolve(); del argv[i:i + 2]
    if not argv or argv[0] not in ('run', 'check', '_exec'): print(__doc__); return 2
    if argv[0] == '_exec':
        ran = execute(Path(argv[1]), '--slow' in argv)
        Path(argv[2]).write_text(json.dumps(ran))
        return 0
    if argv[0] == 'check': return cmd_check(nbs, lib)
    slow = '--slow' in argv
    return cmd_run(notebooks(nbs, [a for a in argv[1:] if a != '--slow']), slow, nbs, lib)

if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
