"""Shared helpers for browser tests: Debian's Chromium driven by PyPI playwright, and a local static server.

Browser tests never download a browser (`playwright install` is never run): they use the system
Chromium at /usr/bin/chromium (`apt-get install chromium`). Without it a test skips, and when
METANB_CI=1 (set by .ci/run) the skip becomes a failure, so CI cannot pass without the browser.

    from browser import chromium_page, serve_dir
    with serve_dir(path) as url, chromium_page() as page:
        page.goto(url)
"""
from __future__ import annotations
import contextlib, functools, http.server, os, shutil, socket, threading
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT/'artifacts'   # gitignored: screenshots and other test artifacts
CHROMIUM_FLAGS = ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic']
INSTALL_HINT = 'install it with `apt-get update && apt-get install -y chromium` (Debian) and `pip install playwright`'

def in_ci() -> bool: return os.environ.get('METANB_CI', '') == '1'

def skip_or_fail(msg: str):
    "Skip the test with `msg`, or fail it when running in CI (METANB_CI=1), where browser tests must run."
    if in_ci(): pytest.fail(f'{msg} (METANB_CI=1: browser tests must run in CI)', pytrace=False)
    pytest.skip(msg)

def chromium_path() -> str | None:
    "Path of the system Chromium (env METANB_CHROMIUM overrides), or None."
    for p in [os.environ.get('METANB_CHROMIUM'), '/usr/bin/chromium', shutil.which('chromium'), shutil.which('chromium-browser')]:
        if p and Path(p).exists(): return p
    return None

@contextlib.contextmanager
def chromium(headless: bool = True, extra_flags=()):
    "A playwright Browser running the system Chromium with the flags needed as root in a container."
    exe = chromium_path()
    if exe is None: skip_or_fail(f'Chromium not found at /usr/bin/chromium: {INSTALL_HINT}')
    try: from playwright.sync_api import sync_playwright
    except ImportError: skip_or_fail(f'playwright is not installed: {INSTALL_HINT}')
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=headless, args=CHROMIUM_FLAGS + list(extra_flags))
        try: yield b
        finally: b.close()

@contextlib.contextmanager
def chromium_page(width: int = 1280, height: int = 900, block_external: bool = True):
    """A fresh page; with `block_external` every request that is not to 127.0.0.1/localhost is aborted and
    recorded in `page.external_requests` (a list of URLs), so a test can assert it needs no network."""
    with chromium() as b:
        ctx = b.new_context(viewport={'width': width, 'height': height})
        page = ctx.new_page()
        page.external_requests = []
        if block_external:
            def _route(route):
                url = route.request.url
                if url.startswith(('http://127.0.0.1', 'http://localhost', 'data:', 'blob:', 'about:')): route.continue_()
                else: page.external_requests.append(url); route.abort()
            page.route('**/*', _route)
        try: yield page
        finally: ctx.close()

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass

@contextlib.contextmanager
def serve_dir(path, host: str = '127.0.0.1'):
    "Serve the folder `path` over HTTP on `host` at a free port (a thread); yields the base URL."
    handler = functools.partial(_QuietHandler, directory=str(path))
    srv = http.server.ThreadingHTTPServer((host, 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try: yield f'http://{host}:{srv.server_address[1]}/'
    finally:
        srv.shutdown(); srv.server_close(); t.join(5)

def screenshot_path(name: str) -> Path:
    "Where a test saves a screenshot: artifacts/<name> (created); the path is returned for printing."
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS/name
