"""The tutorial site: `.ci/docs.py` builds it from the notebooks' stored outputs, and every page opens in headless
Chromium from file:// without a request outside file://, a failed request or a console error, with its figures drawn
and its widgets rendered from their saved state."""
import importlib.util, json, os, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 240  # seconds for the whole site build (2 cores: about 2 minutes)
LOCAL_SCHEMES = ('file:', 'data:', 'blob:', 'about:')

def _docs():
    "The site builder, `.ci/docs.py`, as a module."
    spec = importlib.util.spec_from_file_location('dr_docs_builder', ROOT/'.ci'/'docs.py')
    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m

@pytest.fixture(scope='module')
def docs(): return _docs()

@pytest.fixture(scope='module')
def site(docs, tmp_path_factory):
    for m in ('sphinx', 'myst_nb', 'sphinx_book_theme', 'nbdev', 'yaml'):
        if importlib.util.find_spec(m) is None:
            pytest.skip(f'{m} is not installed (`bash .ci/setup.sh --dev` installs the site builder)')
    if not (docs.ASSETS/'node_modules').exists() and not shutil.which('npm'):
        pytest.skip(f'the site\'s pinned JavaScript is not in {docs.ASSETS} and npm is missing '
                    '(`bash .ci/setup.sh --dev`)')
    tmp = tmp_path_factory.mktemp('docs')
    out = tmp/'site'
    r = subprocess.run([sys.executable, str(ROOT/'.ci'/'docs.py'), '--out', str(out), '--work', str(tmp/'work')],
                       capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    assert r.returncode == 0, f'site build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return out, json.loads((out/'_build_report.json').read_text())

def test_every_notebook_has_a_page(docs, site):
    out, report = site
    pages = docs.page_names(docs.notebooks())
    missing = [f'{nb.name} -> {p}.html' for nb, p in pages.items() if not (out/f'{p}.html').exists()]
    assert not missing, f'notebooks without a page: {missing}'
    assert sorted(report['pages']) == sorted(nb.name for nb in pages), report['errors']
    index = (out/'index.html').read_text()
    for nb, p in pages.items():  # the sidebar lists every page, in file-name order
        if p != 'index': assert f'href="{p}.html"' in index, f'{p}.html not in the sidebar'
    order = [index.find(f'href="{p}.html"') for nb, p in pages.items() if p != 'index']
    assert order == sorted(order), 'sidebar is not in file-name order'

def test_api_docs_built(site):
    "nbdev's show_doc processing ran on every notebook (a cell it could not run leaves a page without API docs)."
    _, report = site
    assert not report['errors'], '\n\n'.join(f'{nb}: {e}' for nb, e in report['errors'].items())

class Visit:
    "One browser tab that records, per page opened, requests outside file://, failed requests and console errors."
    def __init__(self, browser):
        self.page = browser.new_page(viewport={'width': 1280, 'height': 900})
        self.seen = None
        self.page.on('request', lambda r: r.url.startswith(LOCAL_SCHEMES) or self.seen['outside'].append(r.url))
        self.page.on('requestfailed', lambda r: self.seen['failed'].append(f'{r.url} ({r.failure})'))
        self.page.on('console', lambda m: m.type == 'error' and self.seen['console'].append(m.text))
        self.page.on('pageerror', lambda e: self.seen['console'].append(f'uncaught: {e}'))

    def open(self, url:str) -> dict:
        "Load `url`, wait for its plotly figures and widgets; return what Chromium fetched, failed and logged."
        self.seen = {'outside': [], 'failed': [], 'console': []}
        self.page.goto(url, wait_until='load')
        try:
            self.page.wait_for_function("""() => [...document.querySelectorAll('.dr-plotly')]
                    .every(d => d.querySelector('.main-svg'))
                && document.querySelectorAll('.widget-subarea > *').length >=
                   document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length""",
                                        timeout=15_000)
        except Exception as e: self.seen['console'].append(f'figures/widgets not drawn within 15 s: {type(e).__name__}')
        self.page.wait_for_timeout(100)  # late requests (fonts) of the last render
        return self.seen

FIG_MIMES = ('image/png', 'image/jpeg', 'image/svg+xml', 'application/vnd.plotly.v1+json')

def shown_figures(nb:Path) -> int:
    "Figure outputs (image, plotly, a widget's static image) of a notebook's cells that its page shows."
    n = 0
    for c in json.loads(nb.read_text())['cells']:
        src = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        head = [l for l in src.splitlines() if l.lstrip().startswith('#|')]
        if c['cell_type'] != 'code' or any(w in l for l in head for w in ('hide', 'include: false', 'output: false')):
            continue
        n += sum(any(m in o.get('data', {}) for m in FIG_MIMES) for o in c.get('outputs', []))
    return n

def test_pages_offline_in_chromium(docs, site, browser, tmp_path):
    out, report = site
    stored = {nb.name: shown_figures(nb) for nb in docs.notebooks()}
    shots = [tmp_path] + ([Path(os.environ['DR_SCREENSHOTS'])] if os.environ.get('DR_SCREENSHOTS') else [])
    for d in shots: d.mkdir(parents=True, exist_ok=True)
    problems, counted = [], {}
    tab = Visit(browser)
    for nb, info in sorted(report['pages'].items()):
        seen, before = tab.open((out/info['page']).as_uri()), len(problems)
        for kind, items in seen.items():
            problems += [f"{info['page']}: {kind}: {x}" for x in items]
        n = tab.page.evaluate('''() => ({
            img: [...document.querySelectorAll('.cell_output img, .output img')].filter(i => i.naturalWidth > 0).length,
            plotly: [...document.querySelectorAll('.dr-plotly')].filter(d => d.querySelector('.main-svg')).length,
            widgets: document.querySelectorAll('.widget-subarea > *').length,
            title: document.querySelector('article h1') ? document.querySelector('article h1').textContent : ''})''')
        counted[info['page']] = n
        if n['img'] + n['plotly'] < max(info['figures'], stored.get(nb, 0)):
            problems.append(f"{info['page']}: {max(info['figures'], stored.get(nb, 0))} figure outputs, "
                            f"{n['img']} images + {n['plotly']} plotly drawn")
        if n['plotly'] < info['plotly']:
            problems.append(f"{info['page']}: {info['plotly']} plotly figures, {n['plotly']} drawn")
        if n['widgets'] < info['widget_views']:
            problems.append(f"{info['page']}: {info['widget_views']} widget views, {n['widgets']} rendered")
        if not n['title'].strip(): problems.append(f"{info['page']}: no title")
        # a shot of a page with a problem, or of every whole page when asked for (shots cost seconds on 2 cores)
        if len(shots) > 1 or len(problems) > before:
            png = tab.page.screenshot(full_page=len(shots) > 1)
            for d in shots: (d/f"{info['page'][:-5]}.png").write_bytes(png)
    tab.page.close()
    assert not problems, '\n'.join(problems[:40])
    assert counted, 'no page opened'

def test_search_works_offline(site, browser):
    out, _ = site
    assert (out/'search.html').exists() and (out/'searchindex.js').exists()
    tab = Visit(browser)
    seen = tab.open((out/'search.html').as_uri() + '?q=reward')
    tab.page.wait_for_function("() => document.querySelectorAll('#search-results li').length > 0", timeout=15_000)
    assert not any(seen.values()), seen
    tab.page.close()
