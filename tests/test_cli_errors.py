"""Expected failures of the `metanb` command are one line; bugs keep their traceback; the report says what is missing.

- a wrong dataset layout, a malformed config.json, Ctrl-C, a full disk: `metanb CMD: error: ...` on stderr, no traceback;
- `--debug` / `METANB_DEBUG=1` show the traceback; an unexpected error (a bug) keeps it and asks to report it;
- under `--nproc` (torchrun) the same one line, once;
- `metanb report` cross-checks analysis/summary.csv against the analysis step folders and the checkpoint schedule;
- `--quiet` reaches the glyph renderer's progress bar.
"""
import errno, json, os, shutil, subprocess, sys
from pathlib import Path
import pytest
from metanb.cli import run_command

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    code = run_command([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(code, err, *needles, status=1):
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert code == status, (code, err)
    assert len(lines) == 1 and 'Traceback' not in err and lines[0].startswith('metanb '), err
    for n in needles: assert n in lines[0], (n, err)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv('METANB_DATA', str(tmp_path/'data')); monkeypatch.setenv('METANB_DEBUG', '0')  # restored after the test (--debug sets it)
    monkeypatch.setenv('OMP_NUM_THREADS', '1'); monkeypatch.setenv('MPLBACKEND', 'Agg')
    return tmp_path


def test_wrong_data_layout_is_one_line(env, capsys):
    "An empty folder as Omniglot: the loader's message as one line, exit 1 (it was a 34-line traceback)."
    (env/'empty').mkdir()
    code, _, err = _run(['train', '--preset', 'omniglot-5w1s', '--data', env/'empty', '--out', env/'runs', '--quiet'], capsys)
    _one_line(code, err, 'metanb train: error:', 'no Omniglot images found', str(env/'empty'))


def test_debug_shows_the_traceback(env, capsys, monkeypatch):
    (env/'empty').mkdir()
    argv = ['train', '--preset', 'omniglot-5w1s', '--data', env/'empty', '--out', env/'runs', '--quiet']
    with pytest.raises(ValueError, match='no Omniglot images'): run_command([*map(str, argv), '--debug'])
    monkeypatch.setenv('METANB_DEBUG', '1')
    with pytest.raises(ValueError, match='no Omniglot images'): run_command(list(map(str, argv)))


def test_unexpected_error_keeps_traceback(env, capsys, monkeypatch):
    "A ValueError raised outside metanb's code (here int('x') in a patched function) is a bug: traceback + where to report."
    import metanb.cli as cli
    monkeypatch.setattr(cli, 'resolve_settings', lambda *a, **k: int('x'))
    code, _, err = _run(['train', '--out', env/'runs'], capsys)
    assert code == 1 and 'Traceback' in err and 'this is a bug in metanb' in err and cli.ISSUES in err, err


def test_ctrl_c_is_one_line_130(env, capsys, monkeypatch):
    import metanb.cli as cli
    def interrupted(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(cli, 'resolve_settings', interrupted)
    code, _, err = _run(['train', '--out', env/'runs'], capsys)
    _one_line(code, err, 'interrupted', status=130)


def test_ctrl_c_after_the_work_is_ignored():
    "Once the command has finished, a Ctrl-C during interpreter teardown must not kill it silently (exit -2 with no message)."
    code = ("import signal, sys\nfrom metanb import cli\nsys.argv = ['metanb', '--help']\n"
            "try: cli.main()\nexcept SystemExit as e: print('RESULT', e.code, signal.getsignal(signal.SIGINT) == signal.SIG_IGN)")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip().splitlines()[-1] == 'RESULT 0 True', r.stdout + r.stderr


def test_disk_full_is_one_line_naming_the_file(env, capsys, monkeypatch):
    "ENOSPC, even wrapped (torch.save reports it as a RuntimeError), is one line naming the file."
    import metanb.cli as cli
    def full(*a, **k):
        try: raise OSError(errno.ENOSPC, 'No space left on device', '/runs/x/checkpoints/step_000008.pt')
        except OSError: raise RuntimeError('file write failed')
    monkeypatch.setattr(cli, 'resolve_settings', full)
    code, _, err = _run(['train', '--out', env/'runs'], capsys)
    _one_line(code, err, 'no space left', '/runs/x/checkpoints/step_000008.pt')


def test_disk_full_on_a_small_tmpfs(env):
    "A real full disk (a 2 MiB tmpfs, nearly filled): one line, exit 1; after freeing space the run resumes."
    d = env/'small'; d.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', str(d)], capture_output=True).returncode != 0:
        pytest.skip('cannot mount a tmpfs here (needs root)')
    try:
        st = os.statvfs(d)
        (d/'filler').write_bytes(b'\0' * (st.f_bavail * st.f_frsize - 24 * 1024))
        args = [sys.executable, '-m', 'metanb.cli', 'train', '--preset', 'tiny', '--iters', '40', '--checkpoints', '41',
                '--out', str(d), '--name', 'run', '--quiet']
        e = {**os.environ, 'OMP_NUM_THREADS': '1', 'METANB_DATA': str(env/'data')}
        r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=e)
        _one_line(r.returncode, r.stderr, 'no space left', str(d))
        (d/'filler').unlink()
        r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=e)
        assert r.returncode == 0 and (d/'run'/'checkpoints'/'step_000040.pt').is_file(), r.stderr[-2000:]
    finally: subprocess.run(['umount', str(d)], capture_output=True)


BAD = [  # options that were dropped, ignored or unsafe: now one line naming the option, exit 2, nothing started
    (['train', '--strength', '0.5'], '--strength'),
    (['study', '--variants', 'maml,finetune', '--strength', '0.5'], '--strength'),
    (['study', '--regularizer', 'none', '--strength', '0.5'], '--strength'),
    (['train', '--preset', 'tiny', '--ways', '5'], '--ways'),
    (['study', '--preset', 'tiny', '--ways', '3'], '--ways'),
    (['train', '--name', '../../x'], '--name'),
    (['train', '--name', 'a/b'], '--name'),
    (['train', '--name', '..'], '--name'),
]


@pytest.mark.parametrize('i', range(len(BAD)), ids=[' '.join(a) for a, _ in BAD])
def test_option_checks(i, env, capsys):
    args, option = BAD[i]
    out = env/'a'/'b'/'runs'
    code, _, err = _run([*args, '--out', out], capsys)
    _one_line(code, err, option, status=2)
    assert not (env/'a').exists() and not (env/'x').exists()


def test_data_hint_names_the_docs(env, capsys):
    code, _, err = _run(['study', '--preset', 'omniglot-5w1s', '--out', env/'runs'], capsys)
    _one_line(code, err, '--data', 'metanb.data.omniglot', 'metanb.data.miniimagenet', status=2)
    assert 'PAPER' not in err and 'shared' not in err


def test_quiet_reaches_the_glyph_renderer(env, capsys, monkeypatch):
    "`--quiet` passes progress=False to the dataset loader (the glyph renderer's bar); without it, progress=True."
    from metanb.data import registry
    seen = []
    def loader(path, progress=True, **kw):
        seen.append(progress); raise FileNotFoundError('stop here')
    monkeypatch.setitem(registry.DATASETS, 'glyphs', loader)
    base = ['train', '--iters', 1, '--checkpoints', 2, '--out', env/'runs']
    _run([*base, '--quiet'], capsys); _run(base, capsys)
    assert seen == [False, True], seen


# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def analysed(tmp_path_factory):
    "A tiny sinusoid run (steps 0, 4, 8), analysed."
    root = tmp_path_factory.mktemp('analysed')
    assert run_command(['train', '--preset', 'tiny', '--iters', '8', '--checkpoints', '3', '--out', str(root), '--name', 'run', '--quiet']) == 0
    assert run_command(['analyze', str(root/'run'), '--tasks', '3', '--tol', '1e-2', '--quiet', '--threads', '1']) == 0
    return root/'run'


def _copy(run, tmp_path) -> Path:
    d = tmp_path/'run'; shutil.copytree(run, d); return d


def test_malformed_config_is_one_line(analysed, tmp_path, capsys):
    run = _copy(analysed, tmp_path)
    (run/'config.json').write_text('{"model": "mlp",')
    code, _, err = _run(['analyze', run, '--quiet'], capsys)
    _one_line(code, err, 'config.json', 'not valid JSON', status=2)
    (run/'config.json').write_text('{"model": "mlp"}')  # valid JSON, keys missing: metanb's own message
    code, _, err = _run(['analyze', run, '--quiet'], capsys)
    _one_line(code, err, 'metanb analyze: error:')


def test_report_truncated_summary(analysed, tmp_path, capsys):
    "summary.csv cut to its header: the report uses the analysed step folders and says so (it was exit 0 and 'final step 0' or a traceback)."
    run = _copy(analysed, tmp_path); f = run/'analysis'/'summary.csv'
    f.write_text(f.read_text().splitlines()[0] + '\n')
    code, out, err = _run(['report', run], capsys)
    assert code == 0, err
    assert 'missing:' in out and 'summary.csv' in out, out
    md = (run/'report.md').read_text()
    assert '## Missing' in md and '| 8 |' in md, md[:1500]


def test_report_deleted_last_checkpoint(analysed, tmp_path, capsys):
    "The final checkpoint is gone before the analysis: the report and stdout say step 8 of the 8-iteration schedule is missing."
    run = _copy(analysed, tmp_path)
    shutil.rmtree(run/'analysis'); (run/'checkpoints'/'step_000008.pt').unlink()
    assert _run(['analyze', run, '--tasks', 3, '--tol', 1e-2, '--quiet', '--threads', 1], capsys)[0] == 0
    code, out, err = _run(['report', run], capsys)
    assert code == 0 and 'no checkpoint for step(s) [8]' in out, (out, err)
    assert 'no checkpoint for step(s) [8]' in (run/'report.md').read_text()


def test_report_deleted_step_folder(analysed, tmp_path, capsys):
    run = _copy(analysed, tmp_path); shutil.rmtree(run/'analysis'/'step_000004')
    code, out, err = _run(['report', run], capsys)
    assert code == 0 and 'checkpoint step(s) [4] are not analysed' in out, (out, err)


def test_report_nothing_analysed_is_an_error(analysed, tmp_path, capsys):
    run = _copy(analysed, tmp_path); shutil.rmtree(run/'analysis'); (run/'analysis').mkdir()
    (run/'analysis'/'summary.csv').write_text('')
    code, _, err = _run(['report', run], capsys)
    _one_line(code, err, 'summary.csv', 'metanb analyze')


def test_report_complete_run_has_no_missing_section(analysed, tmp_path, capsys):
    run = _copy(analysed, tmp_path)
    code, out, _ = _run(['report', run], capsys)
    assert code == 0 and 'missing' not in out and '## Missing' not in (run/'report.md').read_text()


def test_nproc_error_is_one_line(analysed, tmp_path):
    "Under torchrun (--nproc 2) a rank's expected failure is the same one line, once (not torchrun's report of the child)."
    run = _copy(analysed, tmp_path); (run/'config.json').write_text('{"model": "mlp"}')
    e = {**os.environ, 'OMP_NUM_THREADS': '1', 'MPLBACKEND': 'Agg', 'METANB_DATA': str(tmp_path/'data')}
    e.pop('METANB_DEBUG', None)
    r = subprocess.run([sys.executable, '-m', 'metanb.cli', 'analyze', str(run), '--nproc', '2', '--quiet'], capture_output=True,
                       text=True, timeout=600, env=e, cwd=tmp_path)
    _one_line(r.returncode, r.stderr, 'metanb analyze: error', "neither 'inner_steps_test' nor 'inner_steps'")  # 'error:' or 'error (rank N):', whichever rank fails first
