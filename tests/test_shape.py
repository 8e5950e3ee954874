"The package keeps the shape issue 14 set: no module over 450 lines, no function over 40, no 6-line run repeated (tools/shape.py)."
import importlib.util, pathlib
ROOT = pathlib.Path(__file__).resolve().parents[1]

def test_package_shape():
    spec = importlib.util.spec_from_file_location('shape', ROOT/'tools'/'shape.py'); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    mods, funcs, repeats = m.shape(ROOT/'metanb')
    assert {n: r for n, (r, _) in mods.items() if r > 450} == {}
    assert [f for f in funcs if f[2] > 40] == []
    assert repeats == {}
