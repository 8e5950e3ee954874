import os
import pytest
os.environ.setdefault('MPLBACKEND', 'Agg')
# The tests' tensors are tiny: intra-op threads only contend (measured: a notebook took 80 s CPU with
# torch's 2 threads vs 13 s with 1). pytest-xdist runs two workers instead (see pytest.ini).
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')

def pytest_addoption(parser):
    parser.addoption('--nb-flags', action='append', default=[], metavar='FLAG',
                     help="also run notebook cells flagged FLAG (e.g. slow, cuda); repeatable")

@pytest.fixture
def browser_page():
    "A headless Chromium page (see tests/browser.py); skips without Chromium, fails instead when METANB_CI=1."
    from browser import chromium_page
    with chromium_page() as page: yield page

@pytest.fixture(scope='session')
def slurm():
    "A real one-node SLURM cluster for the session (see tests/slurm.py); skips without SLURM, fails instead when METANB_CI=1."
    from slurm import slurm_cluster
    with slurm_cluster() as tmp: yield tmp
