"""The explorer in a real browser: JupyterLab on 127.0.0.1, headless Chromium (Debian's, via playwright).

The test copies nbs/tutorials/explore.ipynb into a temporary folder, serves it with JupyterLab
(its own config, data and runtime folders; news and announcements off, so no toast covers the
page), runs all cells, waits for the explorer widget, moves the checkpoint slider with the
keyboard, checks that the displayed step and the plots changed, saves a screenshot under
artifacts/ and shuts the server down (its whole process group). Without Chromium the test skips
(fails when METANB_CI=1); see tests/browser.py.
"""
from __future__ import annotations
import contextlib, importlib.util, json, os, re, secrets, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from browser import chromium_page, chromium_path, screenshot_path, skip_or_fail, INSTALL_HINT

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT/'nbs'/'tutorials'/'explore.ipynb'
ANNOUNCEMENTS = '@jupyterlab/apputils-extension:announcements'

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _copy_notebook(src:Path, dst:Path):
    "Copy the notebook, naming the python3 kernel (clean notebooks carry no kernelspec)."
    nb = json.loads(src.read_text())
    nb['metadata']['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3 (ipykernel)', 'language': 'python'}
    dst.write_text(json.dumps(nb))

@contextlib.contextmanager
def jupyterlab(root:Path, tmp:Path):
    "JupyterLab serving `root` on 127.0.0.1 with a token and its own Jupyter folders; yields (base url, token, log path)."
    cfg = tmp/'jupyter-config'; (cfg/'labconfig').mkdir(parents=True)
    (cfg/'labconfig'/'page_config.json').write_text(json.dumps({'disabledExtensions': {ANNOUNCEMENTS: True}}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_DATA_DIR=str(tmp/'jupyter-data'),
               JUPYTER_RUNTIME_DIR=str(tmp/'jupyter-runtime'), MPLBACKEND='Agg', PYTHONUNBUFFERED='1')
    port, token, log = _free_port(), secrets.token_hex(16), tmp/'jupyterlab.log'
    cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root', '--ip=127.0.0.1', f'--port={port}',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}', '--LabApp.news_url=None',
           '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
    with open(log, 'w') as f:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(240):
            if proc.poll() is not None: pytest.fail(f'JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}')
            try: urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2); break
            except OSError: time.sleep(0.25)
        else: pytest.fail(f'JupyterLab did not answer within 60 s:\n{log.read_text()[-3000:]}')
        yield url, token, log
    finally:
        with contextlib.suppress(ProcessLookupError): os.killpg(proc.pid, signal.SIGTERM)
        try: proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError): os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

def _run_all(page):
    "Run > Run All Cells, once the kernel is idle (accepting the kernel dialog if it comes up)."
    page.locator('.jp-StatusBar-TextItem', has_text='| Idle').first.wait_for(timeout=60_000)
    page.locator('.lm-MenuBar-itemLabel', has_text='Run').first.click()
    page.locator('.lm-Menu-itemLabel', has_text='Run All Cells').first.click()
    with contextlib.suppress(Exception):
        page.locator('.jp-Dialog .jp-mod-accept').click(timeout=1_500)

def _src(img) -> str: return img.get_attribute('src') or ''

_HASH = """async img => { const b = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
    let h = 2166136261; for (const x of b) h = Math.imul(h ^ x, 16777619) >>> 0; return `${b.length}:${h}`; }"""
_WATCH_PROGRESS = """() => { window.__metanbSawProgress = false; const box = document.querySelector('.metanb-progress');
    const look = () => { if (getComputedStyle(box).visibility === 'visible' && box.innerText.includes('computing')) window.__metanbSawProgress = true; };
    new MutationObserver(look).observe(box, {attributes: true, childList: true, subtree: true, characterData: true}); }"""

def _bytes_hash(img) -> str:
    "Length and FNV-1a hash of the PNG an <img> shows (its blob fetched in the page)."
    return img.evaluate(_HASH)

def test_explorer_in_jupyterlab(tmp_path):
    t0 = time.time()
    if chromium_path() is None: skip_or_fail(f'Chromium not found at /usr/bin/chromium: {INSTALL_HINT}')
    if importlib.util.find_spec('jupyterlab') is None: skip_or_fail('JupyterLab is not installed: pip install -e ".[dev]" installs it')
    work = tmp_path/'work'; work.mkdir()
    _copy_notebook(NOTEBOOK, work/'explore.ipynb')
    with jupyterlab(work, tmp_path) as (url, token, log), chromium_page(1400, 1500) as page:
        try:
            page.goto(f'{url}/lab/tree/explore.ipynb?token={token}')
            page.locator('.jp-NotebookPanel .jp-Cell').first.wait_for(timeout=60_000)
            page.locator('.jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current').first.click()   # fold the file browser
            _run_all(page)
            ex = page.locator('.metanb-explorer')
            ex.wait_for(timeout=90_000)                     # the widget rendered (jupyterlab_widgets works)
            step = ex.locator('.metanb-step')
            measures, slice_ = ex.locator('img.metanb-panel-measures'), ex.locator('img.metanb-panel-slice')
            page.wait_for_function("document.querySelector('img.metanb-panel-slice')?.src.startsWith('blob:')", timeout=60_000)
            ex.scroll_into_view_if_needed()
            before = dict(step=step.inner_text(), measures=_src(measures), slice=_src(slice_),
                          measures_png=_bytes_hash(measures), slice_png=_bytes_hash(slice_))
            assert before['step'].startswith('step 0'), f'the explorer should open at step 0, it shows {before["step"]!r}'

            page.evaluate(_WATCH_PROGRESS)                             # remember whether the progress bar shows
            handle = ex.locator('.metanb-step-slider .noUi-handle')
            handle.focus(); page.keyboard.press('ArrowRight')          # the keyboard moves the slider one checkpoint
            page.wait_for_function("!document.querySelector('.metanb-step').innerText.startsWith('step 0')", timeout=30_000)
            page.wait_for_function(f"document.querySelector('img.metanb-panel-slice').src !== {json.dumps(before['slice'])}", timeout=60_000)
            after = dict(step=step.inner_text(), measures=_src(measures), slice=_src(slice_),
                         measures_png=_bytes_hash(measures), slice_png=_bytes_hash(slice_))
            assert re.match(r'step [1-9]\d* ', after['step']), f'after ArrowRight the explorer shows {after["step"]!r}'
            assert after['measures_png'] != before['measures_png'], 'the measures panel did not change with the checkpoint'
            assert after['slice_png'] != before['slice_png'], 'the slice panel did not change with the checkpoint'
            assert page.evaluate('window.__metanbSawProgress'), 'no progress indicator showed while the new slice was computed'
            assert ex.locator('.metanb-errors').inner_text().strip() == '', 'the explorer shows an error'

            page.locator('.jp-StatusBar-TextItem', has_text='| Idle').first.wait_for(timeout=30_000)
            errs = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]', has_text='Traceback')
            assert errs.count() == 0, f'a cell failed:\n{errs.first.inner_text()[-2000:]}'
            shot = screenshot_path('explorer.png')
            ex.screenshot(path=str(shot))
            print(f'screenshot of the explorer after moving to {after["step"]!r}: {shot} ({time.time() - t0:.0f} s)')

            ex.locator('.widget-toggle-button', has_text='2D: task plane').click()    # a click on another control
            page.wait_for_function(f"document.querySelector('img.metanb-panel-slice').src !== {json.dumps(after['slice'])}", timeout=60_000)
            assert _bytes_hash(slice_) != after['slice_png'], 'the slice panel did not change with the slice kind'
            page.locator('.jp-StatusBar-TextItem', has_text='| Idle').first.wait_for(timeout=30_000)
            shot2 = screenshot_path('explorer_task_plane.png')
            ex.screenshot(path=str(shot2))
            print(f'screenshot of the task plane at {after["step"].split(" ·")[0]}: {shot2} ({time.time() - t0:.0f} s)')
            assert ex.locator('.metanb-errors').inner_text().strip() == '', 'the explorer shows an error'
            assert page.external_requests == [], f'the page asked the network for {page.external_requests}'
        except Exception:
            page.screenshot(path=str(screenshot_path('explorer_failure.png')))
            print(f'JupyterLab log (tail):\n{log.read_text()[-3000:]}')
            raise
