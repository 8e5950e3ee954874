"""The explorer driven without a browser: widget values in, plain-data state out (metanb.explorer).

These tests use the synthetic run of metanb.testutils (closed-form surfaces), so that each check is
about the explorer's layers, not about training: the loader computes a slice once and caches it
atomically on disk, moving a control never recomputes what is cached, the progress indicator is
visible exactly while a slice is computed, and handler errors land in the explorer.
"""
import json
import numpy as np
import pytest
from metanb.explorer import Explorer
from metanb.results import RunResults, load_landscapes, surfaces, SLICE_KINDS
from metanb.testutils import SyntheticBackend, synthetic_run

@pytest.fixture
def run(tmp_path): return synthetic_run(tmp_path/'run', n_checkpoints=4, last_step=30, n_tasks=5)

class Watching(SyntheticBackend):
    "A synthetic backend that records what the explorer's progress widgets show while it computes."
    explorer = None
    def slice(self, step, tasks, kind, progress=None):
        ex = self.explorer
        if ex is not None: self.seen = (ex.progress_box.layout.visibility, ex.progress_label.value)
        return super().slice(step, tasks, kind, progress)

def test_controls_are_wired_and_expensive_ones_wait_for_release(run):
    ex = Explorer(run, backend=SyntheticBackend(run))
    assert ex.step_slider.continuous_update is False
    assert ex.step_slider.options == (0, 10, 20, 30) and ex.step == 30          # opens at the last checkpoint
    assert 'metanb-explorer' in ex.widget._dom_classes
    for w in (ex.step_slider, ex.task_a, ex.task_b, ex.kind_buttons, ex.loss_buttons):
        assert any('value' in names for names in w._trait_notifiers), f'{w.description or w} is not observed'

def test_slider_updates_every_panel_and_reads_the_cache_afterwards(run):
    ex = Explorer(run, backend=SyntheticBackend(run), step=0, tasks=(1, 4))
    first = ex.state
    assert first['panels']['step_label'].startswith('step 0')
    ex.step_slider.value = 20
    st = ex.state
    assert st['step'] == 20 and st['panels']['step_label'].startswith('step 20')
    assert [st['panels'][p]['step'] for p in ('measures', 'cosine', 'slice')] == [20, 20, 20]
    for p in ('measures', 'cosine', 'slice'): assert st['panels'][p]['png'] != first['panels'][p]['png'], p
    assert st['panels']['support']['png'] == first['panels']['support']['png']   # same tasks: same images
    assert st['panels']['slice']['computed'] is True
    ex.step_slider.value = 0
    assert ex.state['panels']['slice']['computed'] is False and ex.state['panels']['slice']['png'] == first['panels']['slice']['png']
    assert ex.results.backend.calls == [(0, (1, 4), '1d'), (20, (1, 4), '1d')]
    assert ex.state['errors'] == []
    json.dumps(ex.state)                                                       # plain data all the way down

def test_each_control_changes_what_its_panels_show(run):
    ex = Explorer(run, backend=SyntheticBackend(run), step=10, tasks=(0, 1))
    ex.kind_buttons.value = 'tasks'
    s = ex.state['panels']['slice']
    assert (s['kind'], s['shown'], sorted(s['points'])) == ('tasks', True, ['θ0', 'θ1', 'θs'])
    ex.loss_buttons.value = 'query'
    assert ex.state['panels']['slice']['loss'] == 'query'
    ex.task_a.value = 3
    st = ex.state
    assert st['tasks'] == [3, 1] and st['panels']['support']['tasks'] == [3, 1] and st['panels']['cosine']['tasks'] == [3, 1]
    ex.task_b.value = None                                                     # one task: the plane cannot be drawn
    assert ex.state['panels']['slice'] == {**ex.state['panels']['slice'], 'shown': False, 'note': 'choose task B'}
    assert ex.images['slice'].layout.display == 'none' and 'choose task B' in ex.slice_note.value
    ex.kind_buttons.value = 'random'                                           # one task is enough for the random plane
    assert ex.state['panels']['slice']['shown'] and ex.images['slice'].layout.display == ''

def test_set_changes_several_controls_with_one_update(run):
    bk = SyntheticBackend(run)
    ex = Explorer(run, backend=bk, step=0)
    ex.set(step=30, tasks=(2, 4), kind='tasks', loss='query')
    assert bk.calls[-1] == (30, (2, 4), 'tasks') and len(bk.calls) == 2   # no intermediate slices
    with pytest.raises(ValueError, match='use one of'): ex.set(step=15)
    with pytest.raises(ValueError, match='not meta-test tasks'): ex.set(tasks=(2, 99))
    with pytest.raises(ValueError, match='use one of'): ex.set(loss='train')

def test_progress_is_visible_only_while_a_new_slice_is_computed(run):
    bk = Watching(run)
    ex = Explorer(run, backend=bk, step=0); bk.explorer = ex
    ex.step_slider.value = 10
    vis, label = bk.seen
    assert vis == 'visible' and 'computing' in label and 'step 10' in label
    assert ex.progress_box.layout.visibility == 'hidden' and ex.progress.value == ex.progress.max == 2
    bk.seen = None; ex.step_slider.value = 0                                   # cached: no computation, no bar
    assert bk.seen is None and ex.progress_box.layout.visibility == 'hidden'

def test_slices_are_cached_on_disk_once_and_atomically(run):
    r = RunResults(run, SyntheticBackend(run))
    s = r.slice(10, (0, 2), 'random')
    p = r.slice_path(10, (0, 2), 'random')
    assert p.is_file() and p.is_relative_to(run/'analysis'/'explorer')
    assert [q.name for q in p.parent.iterdir()] == [p.name]                    # no temporary file left behind
    np.testing.assert_array_equal(surfaces(load_landscapes(p), 'support'), surfaces(s, 'support'))
    r2 = RunResults(run, SyntheticBackend(run))                                # a new session reads the file
    assert r2.is_cached(10, (0, 2), 'random')
    np.testing.assert_array_equal(surfaces(r2.slice(10, (0, 2), 'random'), 'query'), surfaces(s, 'query'))
    assert r2.backend.calls == [] and r2.computed == 0
    r3 = RunResults(run, SyntheticBackend(run, res=11))                        # other settings: another file
    assert not r3.is_cached(10, (0, 2), 'random')
    assert surfaces(r3.slice(10, (0, 2), 'random'), 'support').shape == (2, 11, 11)

def test_handler_errors_are_shown_in_the_explorer(run):
    class Broken(SyntheticBackend):
        def slice(self, step, *a, **kw):
            if step == 20: raise RuntimeError('boom at step 20')
            return super().slice(step, *a, **kw)
    ex = Explorer(run, backend=Broken(run), step=10)
    ex.step_slider.value = 20
    st = ex.state
    assert st['errors'] == ['RuntimeError: boom at step 20']
    assert ex.log.layout.display == '' and 'boom at step 20' in ''.join(o['text'] for o in ex.log.outputs)
    assert st['panels']['measures']['step'] == 20                              # the other panels still follow
    assert ex.progress_box.layout.visibility == 'hidden'                       # and the bar does not hang

def test_bad_runs_fail_with_clear_errors(tmp_path, run):
    with pytest.raises(FileNotFoundError, match='does not exist'): RunResults(tmp_path/'missing')
    (tmp_path/'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='analyse the run first'): RunResults(tmp_path/'empty')
    (run/'analysis'/'step_000010'/'pairwise.npz').unlink()
    ex = Explorer(run, backend=SyntheticBackend(run), step=0)
    ex.step_slider.value = 10
    assert any('wrote no pairwise matrices' in e for e in ex.state['errors'])
    assert set(SLICE_KINDS) == {'1d', 'tasks', 'random'}

def test_one_computation_serves_both_losses(run):
    bk = SyntheticBackend(run)
    ex = Explorer(run, backend=bk, step=10, kind='random')
    n = len(bk.calls)
    ex.loss_buttons.value = 'query'                                            # the landscapes hold both losses
    assert len(bk.calls) == n and ex.state['panels']['slice']['computed'] is False
    assert ex.state['panels']['slice']['loss'] == 'query'
    assert RunResults(run, bk).is_cached(10, (0, 1), 'random')
    class Wrong(SyntheticBackend):
        def slice(self, step, tasks, kind, progress=None): return super().slice(step, tasks, 'random', progress)
    with pytest.raises(ValueError, match='for the request'): RunResults(run, Wrong(run)).slice(0, (0, 1), '1d')

def test_run_backend_uses_the_analysis_tasks_and_inner_loop(tmp_path):
    "On a trained and analysed run, Explorer(run_dir) alone rebuilds the analysis' tasks: its distances match tasks.csv."
    import torch
    from metanb.train import train
    from metanb.analysis import AnalysisConfig, analyse_run
    torch.set_num_threads(1)
    run = tmp_path/'sine'
    train(dict(dataset='sinusoid', shots=5, queries=5, meta_batch=2, inner_lr=0.01, inner_steps_test=3, meta_iters=4,
               ckpt_every=2, ckpt_log=None, val_every=0, val_tasks=2, model_kwargs={'sizes': [1, 8, 8, 1]}, device='cpu'), run, progress=False)
    tasks, _ = analyse_run(run, AnalysisConfig(n_tasks=3, seed=7, hessian=False, n_boot=20), progress=False, log=None)
    ex = Explorer(run, step=2, tasks=(0, 2))
    st = ex.state
    assert st['errors'] == [] and st['steps'] == [0, 2, 4] and ex.results.task_ids == [0, 1, 2]
    assert (ex.results.backend.steps, ex.results.backend.task_seed) == (3, 7)
    s = ex.results.slice(2, (0, 2), '1d')
    d = tasks[(tasks.step == 2) & (tasks.measure == 'distance')].set_index('task')['value']
    np.testing.assert_allclose([s[0].meta['distance'], s[1].meta['distance']], [d[0], d[2]], rtol=1e-4)
    assert st['panels']['support']['n_support'] == [5, 5]                     # regression: support points
