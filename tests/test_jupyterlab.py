"""The widgets in a real JupyterLab 4: a server on 127.0.0.1 (free port, token) opens a temporary copy of a widget
notebook (`11_viz`, then the landscape tutorial on the shipped model) in headless Chromium, runs every cell that
`nbdev_test` runs, moves the `EpisodeViewer` slider by keyboard and by mouse, switches the
`DiscriminationView` task, and checks that both the page and the kernel changed. Screenshots go to a temporary folder
(and to $DR_SCREENSHOTS when set); the server is always shut down."""
import json, os, secrets, shutil, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from conftest import jupyterlab_missing

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = Path(os.environ.get('DR_JLAB_NOTEBOOK', ROOT/'nbs'/'11_viz.ipynb'))  # the notebook whose widgets are driven
TUTORIAL = ROOT/'nbs'/'80_tutorial_landscape.ipynb'
RUN_ALL_TIMEOUT = {TUTORIAL.name: 400}  # seconds for a notebook's cells (2 shared cores); others get RUN_ALL_DEFAULT
RUN_ALL_DEFAULT = 150
STATE_MARK = 'DR_WIDGET_STATE '

# Cells appended to the temporary copy: the kernel reports its widgets' values, found by class name so that both a
# notebook defining the classes and one importing them from `diffusion_reward.viz` work.
STATE_CELLS = [
    'import json as _dr_json',
    "_dr_ns = list(get_ipython().user_ns.items())\n"
    "print('" + STATE_MARK + "' + _dr_json.dumps({\n"
    "    'slider': [v.slider.value for k, v in _dr_ns\n"
    "               if type(v).__name__ == 'EpisodeViewer' and not k.startswith('_')],\n"
    "    'task': [v.task.value for k, v in _dr_ns\n"
    "             if type(v).__name__ == 'DiscriminationView' and not k.startswith('_')]}))",
]

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _cell(kind, src):
    c = {'cell_type': kind, 'id': secrets.token_hex(4), 'metadata': {}, 'source': src}
    if kind == 'code': c.update(execution_count=None, outputs=[])
    return c

def _skipped(cell) -> bool:
    "True for a code cell that `nbdev_test` skips by default: a `slow` or `gpu` flag, or `eval: false`."
    if cell['cell_type'] != 'code': return False
    lines = ''.join(cell['source']).splitlines()
    directives = ' '.join(l[3:] for l in lines if l.startswith('#|')).replace(':', ' ').split()
    return bool({'slow', 'gpu'} & set(directives)) or 'eval: false' in ''.join(cell['source'])

def _settings(d:Path):
    "JupyterLab user settings for a quiet, fully rendered notebook: no news or update checks, no virtual scrolling."
    for plugin, values in {
            '@jupyterlab/apputils-extension/notification': {'fetchNews': 'false', 'checkForUpdates': False},
            '@jupyterlab/notebook-extension/tracker': {'windowingMode': 'none'}}.items():
        f = d/f'{plugin}.jupyterlab-settings'; f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))

@pytest.fixture
def lab(tmp_path, request):
    "A JupyterLab server on 127.0.0.1 serving a copy of a notebook (+ STATE_CELLS); yields (url, token, name, notebook)."
    notebook = getattr(request, 'param', NOTEBOOK)
    if why := jupyterlab_missing(): pytest.skip(why)
    if not notebook.exists(): pytest.skip(f'{notebook} not found')
    nb = json.loads(notebook.read_text())
    # the copy lives in tmp_path, but its kernel works in the notebook's own folder, as when opened from there
    nb['cells'].insert(0, _cell('code', f'import os as _dr_os; _dr_os.chdir({str(notebook.parent)!r})'))
    # nbdev's export cell would regenerate the library from the checkout's notebooks: not a widget's business; cells
    # that nbdev's own test run skips (`#| slow`, `#| gpu`, `#| eval: false`) are skipped here too
    nb['cells'] = [c for c in nb['cells'] if 'nbdev_export(' not in ''.join(c['source']) and not _skipped(c)]
    nb['cells'] += [_cell('code', s) for s in STATE_CELLS]
    name = 'widgets_under_test.ipynb'
    (tmp_path/'root').mkdir()
    (tmp_path/'root'/name).write_text(json.dumps(nb))
    _settings(tmp_path/'settings')
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path/'config'), JUPYTER_RUNTIME_DIR=str(tmp_path/'runtime'),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path/'settings'), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path/'workspaces'),
               MPLBACKEND='Agg', DR_NO_PROGRESS='1')
    env.setdefault('MUJOCO_GL', 'egl')
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
           '--ServerApp.port_retries=0', f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={tmp_path/"root"}',
           '--LabApp.expose_app_in_browser=True', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate',
           '--ServerApp.terminals_enabled=False'] + (['--allow-root'] if os.geteuid() == 0 else [])
    log = open(tmp_path/'server.log', 'w')
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f'http://127.0.0.1:{port}'
        for _ in range(120):
            if server.poll() is not None:
                pytest.fail(f'jupyter lab exited:\n{(tmp_path/"server.log").read_text()[-3000:]}')
            try:
                with urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2): break
            except OSError: time.sleep(0.5)
        else: pytest.fail(f'jupyter lab did not answer within 60 s:\n{(tmp_path/"server.log").read_text()[-3000:]}')
        yield url, token, name, notebook
    finally:  # always: SIGTERM shuts kernels down; whatever is left of the process group is killed
        try: os.killpg(server.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        try: server.wait(timeout=15)
        except subprocess.TimeoutExpired: os.killpg(server.pid, signal.SIGKILL); server.wait()
        try: os.killpg(server.pid, signal.SIGKILL)  # kernels in the same session
        except ProcessLookupError: pass
        log.close()

NB = 'window.jupyterapp.shell.currentWidget'

def _kernel_state(page) -> dict:
    "Run the last cell (STATE_CELLS) in the kernel and parse what it printed."
    n = page.evaluate(f'''() => {{ const nb = {NB}.content, n = nb.widgets.at(-1).model.executionCount;
        nb.activeCellIndex = nb.widgets.length - 1;
        window.jupyterapp.commands.execute('notebook:run-cell'); return n; }}''')
    page.wait_for_function(f'''n => {{ const c = {NB}.content.widgets.at(-1).model;
        return c.executionCount && c.executionCount !== n
            && c.outputs.toJSON().some(o => (o.text || '').includes('{STATE_MARK}')); }}''', arg=n, timeout=30_000)
    text = page.evaluate(f'''() => {NB}.content.widgets.at(-1).model.outputs.toJSON()
        .map(o => o.text || '').join('')''')
    return json.loads(text.split(STATE_MARK, 1)[1].splitlines()[0])

def _viewer(page):
    "The EpisodeViewer on the page: the widget box holding a slider labelled 'frame'."
    slider = page.locator('.widget-slider', has=page.locator('.widget-label', has_text='frame')).first
    box = page.locator('.widget-vbox', has=slider).last  # innermost VBox: slider, frames, curve
    return slider, box

def _look(box) -> dict:
    "What the viewer shows: frame image sources and a digest of its figure."
    return box.evaluate('''b => ({imgs: [...b.querySelectorAll('img')].map(i => i.src),
        plot: [...b.querySelectorAll('.js-plotly-plot, .jp-OutputArea-output')].map(e => e.innerHTML.length + ':' +
              (e.querySelector('.shapelayer') ? e.querySelector('.shapelayer').innerHTML : e.textContent))
        .join('|')})''')

def test_widgets_in_jupyterlab(lab, browser, tmp_path):
    "The widget notebook: its viewers on synthetic episodes (seconds)."
    drive_widgets(lab, browser, tmp_path)

@pytest.mark.parametrize('lab', [TUTORIAL], indirect=True, ids=['landscape_tutorial'])
def test_landscape_tutorial_in_jupyterlab(lab, browser, tmp_path):
    "The landscape tutorial top to bottom on the shipped model, as `nbdev_test` runs it (its slow cell skipped)."
    drive_widgets(lab, browser, tmp_path)

def drive_widgets(lab, browser, tmp_path):
    "Run all cells, step and drag the EpisodeViewer slider, switch the DiscriminationView task; page and kernel change."
    url, token, name, notebook = lab
    shots = [tmp_path/'shots'] + ([Path(os.environ['DR_SCREENSHOTS'])] if os.environ.get('DR_SCREENSHOTS') else [])
    for d in shots: d.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={'width': 1400, 'height': 1000})
    outside, errors = [], []
    page.on('request', lambda r: r.url.startswith((url, 'data:', 'blob:', 'about:')) or outside.append(r.url))
    page.on('pageerror', lambda e: errors.append(str(e)))
    def shot(tag):
        png = page.screenshot()
        for d in shots: (d/f'jupyterlab_{tag}.png').write_bytes(png)

    page.goto(f'{url}/lab/tree/{name}?token={token}', timeout=60_000)
    page.wait_for_function(f'''() => window.jupyterapp && {NB} && {NB}.sessionContext && {NB}.sessionContext.session
        && {NB}.sessionContext.session.kernel && {NB}.sessionContext.session.kernel.status === 'idle' ''',
                           timeout=60_000)
    limit = RUN_ALL_TIMEOUT.get(notebook.name, RUN_ALL_DEFAULT)
    page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
    try:
        page.wait_for_function(f'''() => {{ const cells = {NB}.content.widgets.filter(c => c.model.type === 'code');
            const idle = {NB}.sessionContext.session.kernel.status === 'idle';  // run-all stops at a failed cell
            return idle && (cells.every(c => c.model.executionCount)
                || cells.some(c => c.model.outputs.toJSON().some(o => o.output_type === 'error'))); }}''',
                               timeout=limit * 1000)
    except Exception:  # say which cells ran and what the kernel is doing, with the page as it stands
        shot('timeout')
        ran = page.evaluate(f'''() => [{NB}.sessionContext.session.kernel.status, {NB}.content.widgets
            .filter(c => c.model.type === 'code').map(c => [c.model.executionCount, c.model.sharedModel.source.slice(0, 40)])]''')
        pytest.fail(f'{notebook.name}: not all cells ran within {limit} s: {ran}')
    failed = page.evaluate(f'''() => {NB}.content.widgets.flatMap(c => c.model.type === 'code' ?
        c.model.outputs.toJSON().filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue) : [])''')
    assert not failed, f'cells failed in JupyterLab: {failed}'

    slider, box = _viewer(page)
    assert slider.count(), f'{notebook.name} displays no EpisodeViewer (no slider labelled "frame")'
    slider.scroll_into_view_if_needed()
    shot('1_ran')
    readout = slider.locator('.widget-readout')
    start, look0 = int(readout.inner_text()), _look(box)
    assert _kernel_state(page)['slider'][-1] == start

    # keyboard: focus the slider handle, one step right
    slider.locator('.noUi-handle').focus()
    page.keyboard.press('ArrowRight')
    changed = '([r, v]) => r.textContent.trim() !== String(v)'
    page.wait_for_function(changed, arg=[readout.element_handle(), start], timeout=10_000)
    by_key = int(readout.inner_text())
    assert by_key == start + 1
    page.wait_for_function('([b, s]) => [...b.querySelectorAll("img")].map(i => i.src).join() !== s',
                           arg=[box.element_handle(), ','.join(look0['imgs'])], timeout=20_000)
    look1 = _look(box)
    assert look1['imgs'] != look0['imgs'], 'frame images did not change after the keyboard step'
    shot('2_keyboard')
    assert _kernel_state(page)['slider'][-1] == by_key

    # mouse: drag the handle to 80% of the track (running the state cell scrolled the notebook to its end)
    slider.scroll_into_view_if_needed()
    track = slider.locator('.noUi-base').bounding_box()
    handle = slider.locator('.noUi-handle').bounding_box()
    page.mouse.move(handle['x'] + handle['width'] / 2, handle['y'] + handle['height'] / 2)
    page.mouse.down()
    page.mouse.move(track['x'] + 0.8 * track['width'], track['y'] + track['height'] / 2, steps=8)
    page.mouse.up()
    page.wait_for_function(changed, arg=[readout.element_handle(), by_key], timeout=10_000)
    by_mouse = int(readout.inner_text())
    assert by_mouse > by_key + 2, (by_key, by_mouse)
    page.wait_for_function('([b, s]) => [...b.querySelectorAll("img")].map(i => i.src).join() !== s',
                           arg=[box.element_handle(), ','.join(look1['imgs'])], timeout=20_000)
    page.wait_for_timeout(500)  # the curve redraws after the frames
    look2 = _look(box)
    assert look2['imgs'] != look1['imgs'] and look2['plot'] != look1['plot'], 'viewer did not redraw after the drag'
    shot('3_mouse')
    assert _kernel_state(page)['slider'][-1] == by_mouse

    # DiscriminationView: switch the task drop-down, when the notebook shows one
    task = page.locator('.widget-dropdown', has=page.locator('.widget-label', has_text='task')).first
    if task.count():
        task.scroll_into_view_if_needed()
        select = task.locator('select')
        options = select.evaluate('s => [...s.options].map(o => o.value)')
        old = select.input_value()
        new = next(o for o in options if o != old)
        dv = page.locator('.widget-vbox', has=task).last
        before = dv.evaluate('b => b.innerHTML')
        select.select_option(new)
        page.wait_for_function('([b, h]) => b.innerHTML !== h', arg=[dv.element_handle(), before], timeout=20_000)
        page.wait_for_timeout(500)
        shot('4_task')
        assert new in dv.evaluate('b => b.textContent'), f'figure does not name the task {new!r}'
        assert _kernel_state(page)['task'][-1] == new
    assert not outside, f'JupyterLab page requested outside 127.0.0.1: {outside[:10]}'
    assert not errors, f'uncaught page errors: {errors[:5]}'
    page.close()
