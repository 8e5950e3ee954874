"""Real-data loaders on tiny fixtures written here, independently of the library's own fixture makers,
in exactly the four on-disk layouts users have: Omniglot (torchvision `omniglot-py`, MAML `omniglot_resized`)
and MiniImageNet (`images/` + csv files, `mini-imagenet-cache-*.pkl`). Checks loading, splits, rotations,
shapes, pixel conventions and every error case (messages name the path and the supported layouts)."""
import csv, pickle, random
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from metanb.data.omniglot import load_omniglot
from metanb.data.miniimagenet import load_miniimagenet
from metanb.data.registry import load_dataset
from metanb.tasks import EpisodicTasks

OMNI_LAYOUTS = ("'torchvision'", "'resized'")
MINI_LAYOUTS = ("'csv'", "'pickle'")

def char_png(path: Path, size: int, k: int):
    "A black-on-white 1-bit PNG: a horizontal bar whose row depends on `k` (row k+2), plus a short vertical bar at the left."
    im = np.full((size, size), 255, np.uint8)
    im[k + 2, 2:size - 2] = 0; im[2:size // 2, 2] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(im).convert('1').save(path)

@pytest.fixture
def omniglot_py(tmp_path):
    "tmp/omniglot-py with 3 background alphabets (Latin 3 chars, Greek 2, Korean 3) and 2 evaluation ones (Kannada 2, Tengwar 3), 5 drawers, 105x105."
    sets = {'images_background': {'Latin': 3, 'Greek': 2, 'Korean': 3}, 'images_evaluation': {'Kannada': 2, 'Tengwar': 3}}
    k = 0
    for s, alph in sets.items():
        for a, n in alph.items():
            for c in range(n):
                for d in range(5): char_png(tmp_path/'omniglot-py'/s/a/f'character{c + 1:02d}'/f'{k:04d}_{d + 1:02d}.png', 105, k % 50)
                k += 1
    return tmp_path

@pytest.fixture
def omniglot_resized(tmp_path):
    "tmp/omniglot_resized/<Alphabet>/<character>/*.png: 4 alphabets x 4 characters x 5 drawers at 28x28."
    root = tmp_path/'omniglot_resized'
    for a in ['Alphabet_of_the_Magi', 'Bengali', 'Futurama', 'Tifinagh']:
        for c in range(4):
            for d in range(5): char_png(root/a/f'character{c + 1:02d}'/f'{c:04d}_{d + 1:02d}.png', 28, c + d)
    return root

# ---------------------------------------------------------------- Omniglot, torchvision layout

def test_omniglot_torchvision_loads_with_rotations(omniglot_py):
    d = load_omniglot(omniglot_py)                                    # the parent of omniglot-py
    assert d.images.shape == (13 * 4, 5, 1, 28, 28) and d.images.dtype == torch.uint8
    assert d.meta['layout'] == 'torchvision' and d.meta['split'] == 'background'
    d2 = load_omniglot(omniglot_py/'omniglot-py')                     # omniglot-py itself
    assert torch.equal(d.images, d2.images) and d.splits == d2.splits
    for c in range(13):                                               # class 4c + r is character c rotated by 90 r degrees
        for r in range(4): assert torch.equal(d.images[4 * c + r], torch.rot90(d.images[4 * c], r, (-2, -1)))
    assert d.names[:2] == ['Greek/character01/rot0', 'Greek/character01/rot90']       # alphabets sorted

def test_omniglot_torchvision_background_evaluation_split(omniglot_py):
    d = load_omniglot(omniglot_py)
    alph = d.meta['alphabet']
    assert {alph[i] for i in d.splits['test']} == {'Kannada', 'Tengwar'} and len(d.splits['test']) == 5 * 4
    tr, va = {alph[i] for i in d.splits['train']}, {alph[i] for i in d.splits['val']}
    assert tr and va and not tr & va and tr | va == {'Latin', 'Greek', 'Korean'}   # whole background alphabets carved out as val
    base = lambda s: {i // 4 for i in d.splits[s]}
    assert all(set(range(4 * c, 4 * c + 4)) <= set(d.splits[s]) for s in d.splits for c in base(s))  # rotations stay with their character
    assert sorted(sum(d.splits.values(), [])) == list(range(52))

def test_omniglot_pixels_inverted_and_resized(omniglot_py):
    d = load_omniglot(omniglot_py, size=105, rotations=False)
    x = d.images[0, 0, 0]                                             # Greek sorts first: its first character has k = 3
    assert x.shape == (105, 105) and x[3 + 2, 10] == 255 and x[50, 50] == 0    # ink is 255, background 0
    assert load_omniglot(omniglot_py, size=20, rotations=False).images.shape == (13, 5, 1, 20, 20)

def test_omniglot_cbfinn_split_on_torchvision_layout(omniglot_py):
    d = load_omniglot(omniglot_py, split='cbfinn', n_train=8, n_val=2, rotations=False)
    assert [len(d.splits[s]) for s in ('train', 'val', 'test')] == [8, 2, 3]

# ---------------------------------------------------------------- Omniglot, omniglot_resized layout

def test_omniglot_resized_cbfinn_convention(omniglot_resized):
    d = load_omniglot(omniglot_resized, n_train=10, n_val=2, rotations=False)
    assert d.meta['layout'] == 'resized' and d.meta['split'] == 'cbfinn' and d.images.shape == (16, 5, 1, 28, 28)
    folders = sorted(f'{a.name}/{c.name}' for a in omniglot_resized.iterdir() for c in a.iterdir())
    assert d.names == folders
    random.seed(1); shuffled = list(folders); random.shuffle(shuffled)          # the MAML code's convention
    for s, names in (('train', shuffled[:10]), ('val', shuffled[10:12]), ('test', shuffled[12:])):
        assert sorted(d.names[i] for i in d.splits[s]) == sorted(names)
    r = load_omniglot(omniglot_resized, n_train=10, n_val=2)
    assert r.images.shape == (64, 5, 1, 28, 28) and len(r.splits['test']) == 16
    tasks = EpisodicTasks(r, 'train', n_way=5, shots=1, queries=4).batch(range(3))
    assert tasks.xs.shape == (3, 5, 1, 28, 28) and tasks.xq.max() <= 1.0

def transparent_png(path: Path, mode: str):
    "Rewrite the black-on-white PNG `path` with its white made transparent (and stored black, as drawing tools do) in `mode`."
    with Image.open(path) as im: ink = np.asarray(im.convert('L')) < 128
    a = np.where(ink, 255, 0).astype(np.uint8); z = np.zeros_like(a)
    if mode == 'RGBA': Image.fromarray(np.stack([z, z, z, a], -1), 'RGBA').save(path)
    elif mode == 'LA': Image.fromarray(np.stack([z, a], -1), 'LA').save(path)
    else:
        p = Image.fromarray(ink.astype(np.uint8), 'P'); p.putpalette([0, 0, 0] * 2); p.save(path, transparency=0)

@pytest.mark.parametrize('mode', ['RGBA', 'LA', 'P'])
@pytest.mark.parametrize('layout', ['torchvision', 'resized'])
def test_omniglot_transparent_pngs_read_as_ink_on_white(omniglot_py, omniglot_resized, layout, mode):
    root = omniglot_py if layout == 'torchvision' else omniglot_resized
    kw = dict(rotations=False) if layout == 'torchvision' else dict(rotations=False, n_train=10, n_val=2)
    want = load_omniglot(root, **kw).images
    for f in sorted(root.rglob('*.png'))[::2]: transparent_png(f, mode)      # every other image transparent
    got = load_omniglot(root, **kw).images
    assert torch.equal(got, want), f"{mode} images differ from their opaque originals (max |diff| {(got.int() - want.int()).abs().max()})"

def test_registry_loads_omniglot(omniglot_resized, monkeypatch):
    monkeypatch.setenv('METANB_OMNIGLOT', str(omniglot_resized))
    assert load_dataset('omniglot', n_train=10, n_val=2).n_classes == 64

# ---------------------------------------------------------------- Omniglot errors

def _check_msg(e, path, layouts=OMNI_LAYOUTS):
    msg = str(e.value)
    assert str(path) in msg, msg
    assert all(l in msg for l in layouts), msg

def test_omniglot_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError) as e: load_omniglot(tmp_path/'nowhere')
    _check_msg(e, tmp_path/'nowhere')

def test_omniglot_empty_folder(tmp_path):
    with pytest.raises(ValueError) as e: load_omniglot(tmp_path)
    _check_msg(e, tmp_path)

def test_omniglot_wrong_layout(tmp_path):
    (tmp_path/'Latin'/'character01').mkdir(parents=True)
    (tmp_path/'Latin'/'character01'/'notes.txt').write_text('no images here')
    with pytest.raises(ValueError) as e: load_omniglot(tmp_path)
    _check_msg(e, tmp_path)

def test_omniglot_explicit_layout_mismatch(omniglot_resized):
    with pytest.raises(ValueError) as e: load_omniglot(omniglot_resized, layout='torchvision')
    _check_msg(e, omniglot_resized)
    with pytest.raises(ValueError, match="use split='cbfinn'"): load_omniglot(omniglot_resized, split='background')

def test_omniglot_unreadable_image(omniglot_resized):
    bad = omniglot_resized/'Bengali'/'character02'/'0001_03.png'
    bad.write_bytes(b'\x89PNG truncated')
    with pytest.raises(ValueError) as e: load_omniglot(omniglot_resized, n_train=10, n_val=2)
    _check_msg(e, bad)

def test_omniglot_missing_evaluation_for_background_split(omniglot_py):
    import shutil
    shutil.rmtree(omniglot_py/'omniglot-py'/'images_evaluation')
    with pytest.raises(ValueError, match='needs both images_background and images_evaluation'): load_omniglot(omniglot_py)

# ---------------------------------------------------------------- MiniImageNet fixtures

SPLIT_CLASSES = {'train': ['n01532829', 'n01558993', 'n01704323'], 'val': ['n01855672', 'n02091244'], 'test': ['n01930112', 'n01981276']}
PKL = {'train': 'mini-imagenet-cache-train.pkl', 'val': 'mini-imagenet-cache-validation.pkl', 'test': 'mini-imagenet-cache-test.pkl'}

def mini_images(n_per=4):
    "A flat-colour 84x84 image per (class, index): colour = (40 * class, 10 * index, 200)."
    out = {}
    for s, ws in SPLIT_CLASSES.items():
        for w in ws:
            c = sum(SPLIT_CLASSES.values(), []).index(w)
            out[w] = [np.tile(np.array([40 * c % 256, 10 * i, 200], np.uint8), (84, 84, 1)) for i in range(n_per)]
    return out

@pytest.fixture
def mini_csv(tmp_path):
    root = tmp_path/'mini'; (root/'images').mkdir(parents=True)
    ims = mini_images()
    for s, ws in SPLIT_CLASSES.items():
        rows = []
        for w in ws:
            for i, im in enumerate(ims[w]):
                fn = f'{w}{i + 1:08d}.jpg'; Image.fromarray(im).save(root/'images'/fn, quality=98); rows.append((fn, w))
        with open(root/f'{s}.csv', 'w', newline='') as f: csv.writer(f).writerows([('filename', 'label')] + rows)
    return root

@pytest.fixture(params=[2, 4, 5])
def mini_pickle(tmp_path, request):
    root = tmp_path/'pkl'; root.mkdir()
    ims = mini_images()
    for s, ws in SPLIT_CLASSES.items():
        data = np.stack([im for w in ws for im in ims[w]])
        cd = {w: list(range(4 * k, 4 * k + 4)) for k, w in enumerate(ws)}
        with open(root/PKL[s], 'wb') as f: pickle.dump({'image_data': data, 'class_dict': cd}, f, protocol=request.param)
    return root

# ---------------------------------------------------------------- MiniImageNet, both layouts

def test_miniimagenet_csv_loads(mini_csv):
    d = load_miniimagenet(mini_csv)
    assert d.meta['layout'] == 'csv' and d.images.shape == (7, 4, 3, 84, 84) and d.images.dtype == torch.uint8
    assert d.names == sum(SPLIT_CLASSES.values(), [])
    assert d.splits == {'train': [0, 1, 2], 'val': [3, 4], 'test': [5, 6]}
    assert abs(int(d.images[1, 2, 1, 40, 40]) - 20) <= 3 and abs(int(d.images[1, 2, 2, 40, 40]) - 200) <= 3   # RGB channel order kept
    assert d.mean is not None and len(d.mean) == 3 and d.meta['mean'] == d.mean

def test_miniimagenet_pickle_loads_like_csv(mini_pickle, mini_csv):
    p, c = load_miniimagenet(mini_pickle), load_miniimagenet(mini_csv)
    assert p.meta['layout'] == 'pickle' and p.names == c.names and p.splits == c.splits
    assert (p.images.float() - c.images.float()).abs().max() <= 4                      # flat colours: JPEG is near exact
    train = p.images[p.splits['train']].double() / 255
    assert np.allclose(p.mean, train.mean((0, 1, 3, 4)).numpy()) and np.allclose(p.std, train.permute(2, 0, 1, 3, 4).flatten(1).std(1, unbiased=False).numpy())

def test_miniimagenet_resize_and_tasks(mini_pickle):
    d = load_miniimagenet(mini_pickle, size=32)
    assert d.images.shape == (7, 4, 3, 32, 32)
    tb = EpisodicTasks(d, 'train', n_way=3, shots=1, queries=3).batch(range(2))
    assert tb.xs.shape == (2, 3, 3, 32, 32) and tb.yq.shape == (2, 9)

def test_miniimagenet_py2_style_bytes_keys(tmp_path):
    ims = mini_images()
    for s, ws in SPLIT_CLASSES.items():
        data = np.stack([im for w in ws for im in ims[w]])
        o = {b'image_data': data, b'class_dict': {w.encode(): list(range(4 * k, 4 * k + 4)) for k, w in enumerate(ws)}}
        with open(tmp_path/PKL[s], 'wb') as f: pickle.dump(o, f, protocol=2)
    assert load_miniimagenet(tmp_path).names[0] == 'n01532829'

# ---------------------------------------------------------------- MiniImageNet errors

def test_miniimagenet_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError) as e: load_miniimagenet(tmp_path/'nowhere')
    _check_msg(e, tmp_path/'nowhere', MINI_LAYOUTS)

def test_miniimagenet_empty_folder(tmp_path):
    with pytest.raises(ValueError) as e: load_miniimagenet(tmp_path)
    _check_msg(e, tmp_path, MINI_LAYOUTS)

def test_miniimagenet_missing_csv(mini_csv):
    (mini_csv/'test.csv').unlink()
    with pytest.raises(FileNotFoundError) as e: load_miniimagenet(mini_csv)
    _check_msg(e, mini_csv/'test.csv', MINI_LAYOUTS)

def test_miniimagenet_bad_csv_header(mini_csv):
    (mini_csv/'val.csv').write_text('image,class\nx.jpg,n0\n')
    with pytest.raises(ValueError) as e: load_miniimagenet(mini_csv)
    _check_msg(e, mini_csv/'val.csv', MINI_LAYOUTS)

def test_miniimagenet_missing_and_unreadable_images(mini_csv):
    f = mini_csv/'images'/'n0185567200000002.jpg'
    f.write_bytes(b'not a jpeg')
    with pytest.raises(ValueError) as e: load_miniimagenet(mini_csv)
    _check_msg(e, f, MINI_LAYOUTS)
    f.unlink()
    with pytest.raises(FileNotFoundError) as e: load_miniimagenet(mini_csv)
    _check_msg(e, f, MINI_LAYOUTS)

def test_miniimagenet_missing_images_folder(mini_csv):
    import shutil
    shutil.rmtree(mini_csv/'images')
    with pytest.raises(FileNotFoundError) as e: load_miniimagenet(mini_csv)
    _check_msg(e, mini_csv/'images', MINI_LAYOUTS)

def test_miniimagenet_missing_pickle(tmp_path):
    ims = mini_images()
    with open(tmp_path/PKL['train'], 'wb') as f:
        pickle.dump({'image_data': np.stack(ims['n01532829']), 'class_dict': {'n01532829': [0, 1, 2, 3]}}, f)
    with pytest.raises(FileNotFoundError) as e: load_miniimagenet(tmp_path)
    _check_msg(e, tmp_path/PKL['val'], MINI_LAYOUTS)

class _Evil:
    def __reduce__(self): return (Path.touch, (Path('/tmp/metanb-pwned'),))

def test_miniimagenet_refuses_malicious_pickle(mini_pickle):
    with open(mini_pickle/PKL['val'], 'wb') as f: pickle.dump(_Evil(), f)
    with pytest.raises(ValueError) as e: load_miniimagenet(mini_pickle)
    _check_msg(e, mini_pickle/PKL['val'], MINI_LAYOUTS)
    assert 'refusing to load' in str(e.value) and not Path('/tmp/metanb-pwned').exists()

def test_miniimagenet_wrong_pickle_content(mini_pickle):
    with open(mini_pickle/PKL['test'], 'wb') as f: pickle.dump({'images': [1, 2]}, f)
    with pytest.raises(ValueError) as e: load_miniimagenet(mini_pickle)
    _check_msg(e, mini_pickle/PKL['test'], MINI_LAYOUTS)

def test_miniimagenet_csv_row_without_label(mini_csv):
    "A row that is not 'filename,label' names the csv and its line (it was skipped silently)."
    with open(mini_csv/'train.csv', 'a') as f: f.write('lonely.jpg\n')
    with pytest.raises(ValueError, match=r"train\.csv, line 14: expected 'filename,label', got 'lonely\.jpg'"): load_miniimagenet(mini_csv)
