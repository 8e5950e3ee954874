import os
import pytest
os.environ.setdefault('MPLBACKEND', 'Agg')

def pytest_addoption(parser):
    parser.addoption('--nb-flags', action='append', default=[], metavar='FLAG',
                     help="also run notebook cells flagged FLAG (e.g. slow, cuda); repeatable")

@pytest.fixture
def browser_page():
    "A headless Chromium page (see tests/browser.py); skips without Chromium, fails instead when METANB_CI=1."
    from browser import chromium_page
    with chromium_page() as page: yield page
