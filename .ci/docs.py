#!/usr/bin/env python3
"""Build the tutorial site, offline, from the notebooks' stored outputs.

    python .ci/docs.py [--out _site] [--execute-missing] [--only 11_viz index] [--force]

Every `nbs/*.ipynb` (names starting with `_` skipped) goes through nbdev's own doc processors, as `nbdev_docs` does
(frontmatter, `#| hide` dropped, `show_doc` for exported names, `#| echo: false`, doc links; exported source is shown,
as nbdev shows `#| exports` cells), each in a child process with a time limit. Sphinx + myst-nb + sphinx-book-theme
then render a page per notebook in file-name order, index.ipynb as home, with search and sidebar. require.js, the
ipywidgets HTML manager and MathJax (npm, pinned in .ci/docs/package.json, installed by `.ci/setup.sh --dev`) and
plotly.js (from the plotly package) are copied into `_static`, so the site works from file:// and fetches nothing at
view time. Notebooks are not executed (`.ci/notebooks.py run` does that); `--execute-missing` runs a copy of each
notebook that has no stored output at all (slow/gpu cells skipped) for this build only.
Quarto users keep `nbdev_docs` (nbs/_quarto.yml); this script does not touch it.
"""
from __future__ import annotations
import argparse, hashlib, json, os, queue, re, shutil, signal, subprocess, sys, threading, time, traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
HERE = Path(__file__).resolve().parent/'docs'
ASSETS = Path(os.environ.get('DR_DOCS_CACHE', Path.home()/'.cache'/'diffusion-reward-docs'))
FIG_MIMES = ('image/png', 'image/jpeg', 'image/svg+xml', 'application/vnd.plotly.v1+json')
PLOTLY = 'application/vnd.plotly.v1+json'
WSTATE, WVIEW = 'application/vnd.jupyter.widget-state+json', 'application/vnd.jupyter.widget-view+json'

def _flags() -> set:
    from configparser import ConfigParser
    cp = ConfigParser(); cp.read(ROOT/'settings.ini')
    return set(cp['DEFAULT'].get('tst_flags', '').split())

def notebooks(only=None) -> list:
    "The notebooks that become pages, in file-name order (optionally only those whose stem or name is in `only`)."
    nbs = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))
    if only: nbs = [p for p in nbs if p.stem in only or p.name in only]
    return nbs

def page_names(nbs) -> dict:
    "Notebook -> page name, as nbdev names its pages (`11_viz.ipynb` -> `viz`), so nbdev's doc links resolve."
    res, seen = {}, set()
    for p in nbs:
        name = 'index' if p.stem == 'index' else re.sub(r'^\d+[a-zA-Z0-9]*_', '', p.stem.lower())
        if name in seen: name = p.stem.lower()
        seen.add(name); res[p] = name
    return res

def _sha(*parts) -> str:
    h = hashlib.sha256()
    for b in parts: h.update(b if isinstance(b, bytes) else str(b).encode())
    return h.hexdigest()

def _code_dirs(src:str) -> set:
    "nbdev directive names of a code cell (`#| slow` -> 'slow')."
    res = set()
    for line in src.splitlines():
        m = re.match(r'^\s*#\s*\|\s*([\w-]+)', line)
        if m: res.add(m.group(1))
        elif line.strip(): break
    return res

def has_outputs(nb:dict) -> bool: return any(c.get('outputs') for c in nb['cells'] if c['cell_type'] == 'code')

def _write_if_changed(path:Path, text:str):
    if not path.exists() or path.read_text(encoding='utf-8') != text: path.write_text(text, encoding='utf-8')

# ---------------------------------------------------------------- child processes (run with a time limit)

def _child_execute(src:str, dst:str, cell_timeout:int):
    "Execute a copy of `src` into `dst` with nbclient; slow/gpu cells are left out, widget state is stored."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(src, as_version=4)
    flags, saved = _flags(), {}
    for i, c in enumerate(nb.cells):
        if c.cell_type == 'code' and _code_dirs(c.source) & flags: saved[i], c.source = c.source, ''
    os.environ.setdefault('PLOTLY_RENDERER', 'plotly_mimetype')  # small outputs; the site supplies plotly.js
    os.environ.setdefault('MPLBACKEND', 'Agg')
    NotebookClient(nb, timeout=cell_timeout, kernel_name='python3', store_widget_state=True,
                   resources={'metadata': {'path': str(NBS)}}).execute()
    for i, s in saved.items(): nb.cells[i].source = s
    nbformat.write(nb, dst)

TAG = '@@dr-docs@@ '

def _child_worker():
    "Run jobs read from stdin (one JSON line each) in this process, so nbdev and torch are imported once per worker."
    os.environ['IN_TEST'] = '1'
    import nbdev.processors  # noqa: F401  (imported once per worker, not once per notebook)
    try: import torch  # noqa: F401
    except ImportError: pass
    for line in sys.stdin:
        job, err = json.loads(line), None
        os.chdir(NBS)
        try:
            if job['op'] == 'execute': _child_execute(job['src'], job['dst'], job['cell_timeout'])
            else: _child_process(job['src'], job['dst'], job['pages'], job['nb'])
        except BaseException: err = traceback.format_exc(limit=-3)
        print(TAG + json.dumps({'error': err}), flush=True)

def _first_code_line(msg:str) -> str:
    "The first line of the cell quoted in nbdev's 'imports and other code' warning."
    body = msg.split('---', 1)[-1].strip('-\n ')
    return next((l for l in body.splitlines() if l.strip()), body)

def _child_process(src:str, dst:str, pages_json:str, nb_path:str):
    "nbdev's doc processors on `src`, then the Sphinx/myst-nb form of the result into `dst` (+ `dst`.info.json)."
    import warnings
    os.environ['IN_TEST'] = '1'
    from execnb.nbio import read_nb, nb2dict, mk_cell
    try:  # a worker processes several notebooks: no widget state or figure carries over from the previous one
        import ipywidgets; ipywidgets.Widget.close_all()
        import matplotlib.pyplot as plt; plt.close('all')
    except ImportError: pass
    from nbdev.processors import FilterDefaults, insert_warning, exec_show_docs
    flags, info = _flags(), {'error': None, 'warnings': []}

    def site_directives(cell):
        "Show exported source as nbdev shows `#| exports`; never run slow/gpu cells for show_doc."
        d = getattr(cell, 'directives_', None)
        if not d or cell.cell_type != 'code': return
        if 'export' in d: d['exports'] = d.pop('export')
        if flags & d.keys(): d['eval:'] = ['false']

    class SiteProcs(FilterDefaults):
        def __init__(self, run:bool): self.run = run
        def base_procs(self):
            ps = [p for p in super().base_procs() if p is not insert_warning and (self.run or p is not exec_show_docs)]
            return [site_directives] + ps

    def load():
        nb = read_nb(src)
        nb.path_ = nb_path  # the notebook's own name, also for an executed copy
        nb.cells.append(mk_cell('', 'markdown'))  # nbdev's mv_exports looks one cell past the last exported one
        return nb
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        try: nb = load(); SiteProcs(True)(nb)
        except BaseException as e:
            cause = e.__cause__ or e.__context__
            info['error'] = f'{e}'.strip() + (f'\n  -> {type(cause).__name__}: {cause}' if cause else '')
            nb = load(); SiteProcs(False)(nb)
    info['warnings'] = sorted({_first_code_line(str(w.message)) for w in ws
                               if 'imports and other code' in str(w.message)})
    d = nb2dict(nb)
    pages = json.loads(pages_json)
    site, extra = to_site_nb(d, pages)
    info.update(extra)
    Path(dst).write_text(json.dumps(site, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    Path(dst + '.info.json').write_text(json.dumps(info), encoding='utf-8')

# ---------------------------------------------------------------- nbdev/Quarto notebook -> myst-nb notebook

_re_opt = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')
_re_callout = re.compile(r'^:::\s*\{\.callout-(\w+)[^}]*\}\s*$', re.MULTILINE)
_re_src_link = re.compile(r'^\[source\]\((\S+?)\)\{[^}]*\}\s*$', re.MULTILINE)

def _text(x) -> str: return ''.join(x) if isinstance(x, list) else (x or '')

def _quarto_opts(src:str):
    "Split leading Quarto cell options (`#| echo: false`) off a code cell's source."
    lines, opts = src.splitlines(), {}
    while lines and (m := _re_opt.match(lines[0])):
        opts[m.group(1)] = m.group(2).strip('\'"').lower(); lines.pop(0)
    return opts, '\n'.join(lines).strip('\n')

def _local_links(md:str, pages:dict) -> str:
    "nbdev's links to the published site (`doc_host`/`doc_baseurl`/viz.html#x) -> links to this site's pages."
    base = pages.get('_doc_base')
    if not base: return md
    # raw HTML: MyST would take a relative `viz.html#x` for a cross-reference and drop it
    md = re.sub(r'\[`([^`\]]+)`\]\(' + re.escape(base) + r'([^)\s]+)\)',
                lambda m: f'<a class="reference internal" href="{m.group(2)}"><code class="docutils literal '
                          f'notranslate"><span class="pre">{m.group(1)}</span></code></a>', md)
    return md.replace(base, '')

_re_img = re.compile(r'(!\[[^\]]*\]\(\s*<?|<img\b[^>]*?\bsrc=["\'])([^)\s"\'>]+)')
COLAB_BADGE = 'https://colab.research.google.com/assets/colab-badge.svg'

def _local_images(md:str, extra:dict) -> str:
    "Copy images linked by relative path (from nbs/, else the repo root, as the README does) and Colab's badge in."
    def sub(m):
        url = m.group(2)
        if url == COLAB_BADGE: name, path = 'colab-badge.svg', HERE/'colab-badge.svg'
        elif re.match(r'^[a-z][\w+.-]*:', url, re.I) or url.startswith('#'): return m.group(0)
        else:
            rel = url.split('#')[0].split('?')[0]
            path = next((p for p in (NBS/rel, ROOT/rel) if p.is_file()), None)
            if path is None: return m.group(0)
            name = f'{_sha(str(path.resolve()))[:8]}-{path.name}'
        extra['assets'][name] = str(path)
        return m.group(1) + '_assets/' + name
    return _re_img.sub(sub, md)

def _pandoc_id(s:str) -> str:
    "The id pandoc (Quarto) gives a heading, which nbdev's doc links use."
    return re.sub(r'[^\w.-]', '', re.sub(r'\s+', '-', s.strip().lower())).lstrip('.-0123456789')

def _asis_md(md:str) -> str:
    "show_doc's Quarto markdown -> MyST: source link as HTML, nbdev's anchors (`#config.from_dict`) kept."
    md = re.sub(r'^\s*---\s*\n', '<hr class="dr-api">\n\n', md)  # a transition may not open a section in docutils
    md = _re_src_link.sub(lambda m: f'<a class="dr-source" href="{re.sub(r"#LNone$", "", m.group(1))}">source</a>', md)
    out, fence = [], False
    for line in md.splitlines():
        if line.startswith('```'): fence = not fence
        m = None if fence else re.match(r'^(#{1,6})\s+(.+?)\s*$', line)
        if m: out += [f'<a id="{_pandoc_id(m.group(2))}"></a>', '']
        out.append(line)
    return '\n'.join(out)

def _plotly_html(fig:dict, n:int) -> str:
    "A div and a script that draws a plotly figure with the site's own plotly.js."
    h = (fig.get('layout') or {}).get('height') or 450
    js = json.dumps(fig, separators=(',', ':')).replace('</', '<\\/')
    # drawn when the page has loaded, or at once when the widget manager inserts it later
    return (f'<div id="dr-plotly-{n}" class="plotly-graph-div dr-plotly" style="height:{h}px; width:100%;"></div>\n'
            f'<script type="text/javascript">(function() {{'
            f' var s = document.currentScript, d = s && s.previousElementSibling;'
            f' var draw = function() {{ var f = {js}; Plotly.newPlot(d && d.id === "dr-plotly-{n}" ? d :'
            f' document.getElementById("dr-plotly-{n}"), f.data, f.layout || {{}},'
            f' Object.assign({{responsive: true, displaylogo: false}}, f.config || {{}})); }};'
            f' if (document.readyState === "loading") window.addEventListener("DOMContentLoaded", draw);'
            f' else draw(); }})();'
            f'</script>')

def _is_plotly_loader(o:dict) -> bool:
    "plotly's notebook-renderer init output (the whole library inline, or a CDN require config)."
    html = _text(o.get('data', {}).get('text/html'))
    return set(o.get('data', {})) <= {'text/html'} and 'PlotlyConfig' in html and 'plotly-graph-div' not in html

def _outputs(outs:list, pages:dict, state_ids:set, extra:dict) -> list:
    res = []
    for o in outs:
        data = o.get('data')
        if data is None: res.append(o); continue
        if _is_plotly_loader(o): continue
        if WVIEW in data and data[WVIEW].get('model_id') not in state_ids:
            # no saved widget state (nbdev_clean drops it): show the output's static fallback, if it has one
            extra['widgets_without_state'] += 1
            data = {k: v for k, v in data.items() if k != WVIEW}
            if set(data) <= {'text/plain'}: continue
            o = {**o, 'data': data}
        if PLOTLY in data:
            extra['plotly'] += 1
            o = {**o, 'data': {'text/html': _plotly_html(data[PLOTLY], extra['plotly']),
                               'text/plain': data.get('text/plain', '<plotly figure>')}}
        elif 'text/markdown' in data:
            o = {**o, 'data': {**data, 'text/markdown': _local_links(_text(data['text/markdown']), pages)}}
        if any(m in o['data'] for m in FIG_MIMES) or 'plotly-graph-div' in _text(o['data'].get('text/html')):
            extra['figures'] += 1
        res.append(o)
    return res

def _cell(kind, src, **kw):
    c = {'cell_type': kind, 'metadata': kw.pop('metadata', {}), 'source': src}
    if kind == 'code': c.update(execution_count=kw.pop('execution_count', None), outputs=kw.pop('outputs', []))
    return c

def to_site_nb(nb:dict, pages:dict):
    "A notebook processed by nbdev (Quarto form) -> the form myst-nb renders; also some counts for the report."
    import yaml
    meta = dict(nb.get('metadata', {}))
    meta.setdefault('kernelspec', {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'})
    meta.setdefault('language_info', {'name': 'python'})
    extra = {'plotly': 0, 'figures': 0, 'widgets_without_state': 0, 'widget_views': 0, 'title': None, 'assets': {}}
    state = ((meta.get('widgets') or {}).get(WSTATE) or {}).get('state') or {}
    if not state: meta.pop('widgets', None)
    for m in state.values():  # Output widgets holding plotly figures: the HTML manager has no plotly renderer
        outs = (m.get('state') or {}).get('outputs')
        if m.get('model_name') == 'OutputModel' and outs: m['state']['outputs'] = _outputs(outs, pages, set(), extra)
    cells = []
    for c in nb['cells']:
        src = _text(c.get('source'))
        if c['cell_type'] == 'raw':
            fm = re.match(r'^---\s*\n(.*?)\n---\s*$', src.strip(), re.DOTALL)
            if not fm: cells.append(_cell('raw', src, metadata=c.get('metadata', {}))); continue
            d = yaml.safe_load(fm.group(1)) or {}
            if d.get('title'):
                extra['title'] = str(d['title'])
                desc = f"\n\n> {d['description']}" if d.get('description') else ''
                cells.append(_cell('markdown', f"# {d['title']}{desc}"))
            continue
        if c['cell_type'] == 'markdown':
            src = _re_callout.sub(lambda m: ':::{' + m.group(1) + '}', _local_links(src, pages))
            src = _local_images(src, extra)
            if src.strip(): cells.append(_cell('markdown', src))
            continue
        opts, src = _quarto_opts(src)
        if opts.get('include') == 'false': continue
        outs = _outputs(c.get('outputs', []), pages, set(state), extra)
        extra['widget_views'] += sum(WVIEW in o.get('data', {}) for o in outs)
        if opts.get('output') == 'asis':
            md = '\n\n'.join(_text(o['data'].get('text/markdown') or o['data'].get('text/html') or '')
                             for o in outs if o.get('data'))
            if src and opts.get('echo') != 'false': cells.append(_cell('code', src))
            if md.strip(): cells.append(_cell('markdown', _asis_md(md)))
            continue
        tags = []
        if opts.get('echo') == 'false' or not src.strip(): tags.append('remove-input')
        if opts.get('output') == 'false': tags.append('remove-output')
        if opts.get('code-fold') == 'true': tags.append('hide-input')
        if not src.strip() and (not outs or 'remove-output' in tags): continue
        cells.append(_cell('code', src, metadata={'tags': tags} if tags else {},
                           execution_count=c.get('execution_count'), outputs=outs))
    for i, c in enumerate(cells): c['id'] = f'c{i}'
    return {'cells': cells, 'metadata': meta, 'nbformat': 4, 'nbformat_minor': 5}, extra

# ---------------------------------------------------------------- parent: guarded steps, assets, Sphinx

def run_guarded(cmd:list, timeout:float, cwd=None, env=None) -> tuple:
    "Run `cmd` in its own process group; kill the whole group (kernels included) after `timeout` seconds."
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try: out, _ = p.communicate(timeout=timeout); return p.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL); out, _ = p.communicate()
        return None, (out or '') + f'\n[timed out after {timeout:.0f} s]'

class Worker:
    "A `docs.py _worker` child; `run` gives it one job and kills it (kernels included) when the job overruns."
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, __file__, '_worker'], cwd=NBS, env=_child_env(), text=True,
                                  bufsize=1,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        self.q, self.log = queue.Queue(), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            if line.startswith(TAG): self.q.put(json.loads(line[len(TAG):]))
            else: self.log = (self.log + [line])[-200:]
        self.q.put(None)

    def run(self, job:dict, timeout:float):
        "None when the job succeeded, else what went wrong."
        self.log = []
        try: self.p.stdin.write(json.dumps(job) + '\n'); self.p.stdin.flush()
        except OSError: return 'worker exited:\n' + ''.join(self.log[-40:])
        try: r = self.q.get(timeout=timeout)
        except queue.Empty: self.kill(); return f'timed out after {timeout:.0f} s:\n' + ''.join(self.log[-40:])
        if r is None: self.kill(); return 'worker exited:\n' + ''.join(self.log[-40:])
        return r['error'] and r['error'] + ''.join(self.log[-40:])

    @property
    def alive(self): return self.p.poll() is None

    def kill(self):
        try: os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError: pass
        self.p.wait()

    def close(self):
        try: self.p.stdin.close(); self.p.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired): self.kill()

def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault('MUJOCO_GL', 'egl'); env.setdefault('PYOPENGL_PLATFORM', env['MUJOCO_GL'])
    env.update(DR_NO_PROGRESS='1', MPLBACKEND='Agg', PYTHONWARNINGS='ignore::DeprecationWarning')
    return env

def check_tools():
    missing = [m for m in ('sphinx', 'myst_nb', 'sphinx_book_theme', 'nbdev', 'execnb', 'yaml') if not _importable(m)]
    if missing: sys.exit(f'docs: missing Python packages {missing}; install them with `bash .ci/setup.sh --dev`.')

def _importable(m):
    import importlib.util
    return importlib.util.find_spec(m) is not None

def find_assets() -> dict:
    "The pinned npm files the site serves itself; installs them into the cache with npm when it is missing."
    nm = ASSETS/'node_modules'
    want = {'require': nm/'requirejs'/'require.js',
            'widgets': nm/'@jupyter-widgets'/'html-manager'/'dist'/'embed-amd.js',
            'mathjax': nm/'mathjax'/'es5'/'tex-mml-chtml.js'}
    pinned = json.loads((HERE/'package.json').read_text())['dependencies']
    def current():
        try: return all(json.loads((nm/k/'package.json').read_text())['version'] == v for k, v in pinned.items())
        except (OSError, ValueError, KeyError): return False
    if not (current() and all(p.exists() for p in want.values())):
        if not shutil.which('npm'):
            sys.exit(f'docs: JavaScript assets missing in {ASSETS} and no npm; run `bash .ci/setup.sh --dev`.')
        print(f'docs: installing pinned JavaScript assets into {ASSETS} (npm) ...', flush=True)
        ASSETS.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE/'package.json', ASSETS/'package.json')
        r = subprocess.run(['npm', 'install', '--no-audit', '--no-fund', '--ignore-scripts', '--prefix', str(ASSETS)],
                           capture_output=True, text=True)
        if r.returncode or not all(p.exists() for p in want.values()):
            sys.exit(f'docs: npm install into {ASSETS} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}')
    return want

def copy_static(static:Path, want:dict):
    "require.js, the widget manager (+ its fonts, found under _static), MathJax (CHTML) and plotly.js into `static`."
    import plotly
    static.mkdir(parents=True, exist_ok=True)
    shutil.copy2(want['require'], static/'require.js')
    shutil.copy2(Path(plotly.__file__).parent/'package_data'/'plotly.min.js', static/'plotly.min.js')
    shutil.copy2(HERE/'require-config.js', static/'require-config.js')  # puts the widget fonts under _static
    wd = static/'jupyter-widgets'; wd.mkdir(exist_ok=True)
    for f in want['widgets'].parent.iterdir():
        if f.name == 'embed-amd.js' or f.suffix in ('.woff', '.woff2', '.ttf', '.eot', '.svg'):
            shutil.copy2(f, wd/f.name)
    es5, mj = want['mathjax'].parent, static/'mathjax'
    if not (mj/'tex-mml-chtml.js').exists():
        mj.mkdir(exist_ok=True); shutil.copy2(es5/'tex-mml-chtml.js', mj)
        for sub in ('output/chtml', 'input/tex', 'ui', 'a11y', 'adaptors'):
            shutil.copytree(es5/sub, mj/sub, dirs_exist_ok=True)

def _index_toctree(pages:dict, titles:dict) -> str:
    lessons = [p for p in pages.values() if p != 'index' and not _appendix(p, pages)]
    rest = [p for p in pages.values() if p != 'index' and _appendix(p, pages)]
    def tree(cap, ps):
        return f'```{{toctree}}\n:hidden:\n:maxdepth: 1\n:caption: {cap}\n\n' + '\n'.join(ps) + '\n```' if ps else ''
    return '\n\n'.join(t for t in (tree('Lessons', lessons), tree('Tools and test helpers', rest)) if t)

def _appendix(page, pages) -> bool:
    nb = next(k for k, v in pages.items() if v == page)
    m = re.match(r'^(\d+)', nb.stem)
    return bool(m) and int(m.group(1)) >= 90

def build(out:Path, work:Path, only=None, execute_missing=False, force=False, timeout=300, jobs=2,
          sphinx_timeout=900, cell_timeout=120) -> dict:
    t0 = time.time()
    check_tools()
    want = find_assets()
    from configparser import ConfigParser
    cfg = ConfigParser(); cfg.read(ROOT/'settings.ini'); cfg = cfg['DEFAULT']
    nbs = notebooks(only)
    if not nbs: sys.exit(f'docs: no notebooks in {NBS}' + (f' matching {only}' if only else ''))
    pages = page_names(nbs)
    src, proc, exe = work/'src', work/'proc', work/'executed'
    for d in (src, proc, exe): d.mkdir(parents=True, exist_ok=True)
    for old in src.glob('*.ipynb'):
        if old.stem not in pages.values(): old.unlink()
    page_map = {'_doc_base': cfg.get('doc_host', '').rstrip('/') + cfg.get('doc_baseurl', '').rstrip('/') + '/'}
    modidx = ROOT/cfg.get('lib_name', 'diffusion_reward')/'_modidx.py'  # doc links come from it
    key_base = _sha(Path(__file__).read_bytes(), modidx.read_bytes() if modidx.exists() else b'')
    report = {'pages': {}, 'errors': {}, 'warnings': {}, 'executed': [], 'timings': {}}

    def one(nb_path:Path):
        t = time.time()
        try: return _one(nb_path)
        finally: report['timings'][nb_path.name] = round(time.time() - t, 1)

    local, workers = threading.local(), []
    def run(job):
        w = getattr(local, 'w', None)
        if w is None or not w.alive: local.w = w = Worker(); workers.append(w)
        return w.run(job, timeout)

    def _one(nb_path:Path):
        page, raw = pages[nb_path], nb_path.read_bytes()
        source = nb_path
        if execute_missing and not has_outputs(json.loads(raw)):
            ex = exe/f'{nb_path.stem}-{_sha(raw)[:16]}.ipynb'
            if not ex.exists() or force:
                err = run({'op': 'execute', 'src': str(nb_path), 'dst': str(ex) + '.tmp', 'cell_timeout': cell_timeout})
                if err: return page, f'execution failed: {err[-3000:]}', None
                os.replace(str(ex) + '.tmp', ex)
            report['executed'].append(nb_path.name); source = ex
        key = _sha(key_base, source.read_bytes())
        dst, keyf = proc/f'{page}.ipynb', proc/f'{page}.key'
        if force or not (dst.exists() and keyf.exists() and keyf.read_text() == key):
            err = run({'op': 'process', 'src': str(source), 'dst': str(dst), 'pages': json.dumps(page_map),
                       'nb': str(nb_path)})
            if err: return page, f'processing failed: {err[-3000:]}', None
            keyf.write_text(key)
        return page, None, json.loads(Path(str(dst) + '.info.json').read_text())

    t = time.time()
    try:
        with ThreadPoolExecutor(max(1, jobs)) as ex: results = list(ex.map(one, nbs))
    finally:
        for w in workers: w.close()
    report['timings']['notebooks_s'] = round(time.time() - t, 1)
    titles = {}
    for nb_path, (page, err, info) in zip(nbs, results):
        if err:  # still give the notebook a page: nbdev's processing without show_doc execution failed too
            report['errors'][nb_path.name] = err; report.setdefault('failed', []).append(nb_path.name)
            md = f'# {nb_path.stem}\n\nThis page could not be built:\n\n```\n{err[-1500:]}\n```'
            fallback = {'cells': [{**_cell('markdown', md), 'id': 'c0'}],
                        'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}
            _write_if_changed(src/f'{page}.ipynb', json.dumps(fallback, indent=1) + '\n'); continue
        if info['error']:
            report['errors'][nb_path.name] = 'show_doc execution failed, page built without API docs: ' + info['error']
        if info['warnings']: report['warnings'][nb_path.name] = info['warnings']
        for name, path in info['assets'].items():
            (src/'_assets').mkdir(exist_ok=True)
            if not (src/'_assets'/name).exists(): shutil.copy2(path, src/'_assets'/name)
        titles[page] = info['title'] or nb_path.stem
        report['pages'][nb_path.name] = {'page': f'{page}.html', 'figures': info['figures'], 'plotly': info['plotly'],
                                         'widget_views': info['widget_views'],
                                         'widgets_without_state': info['widgets_without_state']}
        text = (proc/f'{page}.ipynb').read_text(encoding='utf-8')
        if page == 'index':
            d = json.loads(text)
            d['cells'].append({**_cell('markdown', _index_toctree(pages, titles)), 'id': 'toctree'})
            text = json.dumps(d, indent=1, ensure_ascii=False) + '\n'
        _write_if_changed(src/f'{page}.ipynb', text)
    if 'index' not in pages.values():
        _write_if_changed(src/'index.md', f"# {cfg.get('title', 'Tutorials')}\n\n{cfg.get('description', '')}\n\n"
                          + _index_toctree(pages, titles) + '\n')
    elif (src/'index.md').exists(): (src/'index.md').unlink()
    plotly_pages = sorted(v['page'][:-5] for v in report['pages'].values() if v['plotly'])
    _write_if_changed(src/'conf.py', (HERE/'conf.py').read_text(encoding='utf-8'))
    _write_if_changed(src/'_site.json', json.dumps({
        'title': cfg.get('title'), 'author': cfg.get('author'), 'copyright': cfg.get('copyright'),
        'description': cfg.get('description'), 'repo': cfg.get('git_url'), 'branch': cfg.get('branch', 'main'),
        'plotly_pages': plotly_pages}, indent=1))
    copy_static(src/'_static', want)
    _write_if_changed(src/'_static'/'site.css', (HERE/'site.css').read_text(encoding='utf-8'))

    t = time.time()
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-j', str(max(1, jobs)), '-d', str(work/'doctrees'),
           str(src), str(out)] + (['-E'] if force else [])
    rc, log = run_guarded(cmd, sphinx_timeout, cwd=src, env=_child_env())
    report['timings']['sphinx_s'] = round(time.time() - t, 1)
    report['sphinx_log'] = log.strip()[-6000:]
    if rc != 0: sys.exit(f'docs: sphinx-build failed ({rc}):\n{log[-6000:]}')
    (out/'.nojekyll').touch()
    report['timings']['total_s'] = round(time.time() - t0, 1)
    report['out'] = str(out)
    (out/'_build_report.json').write_text(json.dumps(report, indent=1))
    return report

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--out', default=str(ROOT/'_site'), help='site folder (default: _site)')
    ap.add_argument('--work', default=str(ROOT/'build'/'docs'), help='staging and cache folder (default: build/docs)')
    ap.add_argument('--execute-missing', action='store_true',
                    help='execute (a copy of) notebooks that hold no output at all, for this build only')
    ap.add_argument('--only', nargs='+', help='build only these notebooks (stems or file names)')
    ap.add_argument('--force', action='store_true', help='ignore the caches and rebuild every page')
    ap.add_argument('--jobs', type=int, default=min(2, os.cpu_count() or 1), help='parallel notebooks / Sphinx jobs')
    ap.add_argument('--timeout', type=int, default=300, help='time limit per notebook step, seconds')
    ap.add_argument('--strict', action='store_true', help='exit 1 when a page was built without its API docs')
    a = ap.parse_args(argv)
    r = build(Path(a.out).resolve(), Path(a.work).resolve(), a.only, a.execute_missing, a.force, a.timeout, a.jobs)
    for nb, ws in r['warnings'].items():
        print(f'docs: {nb}: nbdev runs these cells that mix imports and code (imports belong in their own cells): '
              + '; '.join(repr(w) for w in ws))
    for nb, e in r['errors'].items(): print(f'docs: {nb}: {e}', file=sys.stderr)
    n, failed = len(r['pages']) + len(r.get('failed', [])), r.get('failed', [])
    print(f"docs: {n} pages in {r['out']} ({r['timings']['total_s']} s; notebooks {r['timings']['notebooks_s']} s, "
          f"sphinx {r['timings']['sphinx_s']} s); open {r['out']}/index.html")
    if failed: sys.exit(f'docs: {len(failed)} notebooks could not be processed (their pages show the error): {failed}')
    if r['errors'] and a.strict: sys.exit(1)

if __name__ == '__main__':
    if sys.argv[1:2] == ['_worker']: _child_worker()
    else: main()
