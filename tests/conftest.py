import os
os.environ.setdefault('MPLBACKEND', 'Agg')

def pytest_addoption(parser):
    parser.addoption('--nb-flags', action='append', default=[], metavar='FLAG',
                     help="also run notebook cells flagged FLAG (e.g. slow, cuda); repeatable")
