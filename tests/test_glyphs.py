"""Character counts of the glyph catalog (no drawer is rendered): >= 600 from matplotlib's fonts alone,
>= 5,000 with Debian's fonts-noto-core (skipped where it is absent, except in CI, METANB_CI=1)."""
import os
import pytest
from metanb.data.glyphs import glyph_catalog, system_fonts, SYSTEM_FONT_DIRS

def test_matplotlib_fonts_give_600_characters():
    cat = glyph_catalog('matplotlib')
    assert len(cat) >= 600, f'only {len(cat)} characters from the matplotlib fonts: {cat.scripts}'
    assert len(set(cat.codepoints)) == len(cat) and max(cat.scripts.values()) <= 55

def test_noto_fonts_give_5000_characters():
    if not system_fonts():
        msg = f'no system fonts in {SYSTEM_FONT_DIRS}: install fonts-noto-core (apt-get install fonts-noto-core)'
        if os.environ.get('METANB_CI') == '1': pytest.fail('CI must install fonts-noto-core: ' + msg)
        pytest.skip(msg)
    cat = glyph_catalog('auto')
    assert len(cat) >= 5000, f'only {len(cat)} characters with the system fonts; dropped {cat.dropped}'
    assert len(cat.scripts) >= 100

MICRO = dict(fonts='matplotlib', scripts=['Latin', 'Greek', 'Cyrillic'], max_per_script=4, min_per_script=1, n_drawers=3, workers=1)

def test_glyph_progress_bar_silenced(tmp_path, capsys):
    "`progress=False`, and `glyph_progress(False)` around a default call (how runs load data), print nothing while rendering."
    from metanb.data.glyphs import load_glyphs, glyph_progress
    load_glyphs(tmp_path, progress=False, **MICRO); assert capsys.readouterr() == ('', '')
    with glyph_progress(False): load_glyphs(tmp_path, rebuild=True, **MICRO)
    assert capsys.readouterr() == ('', '')
    load_glyphs(tmp_path, rebuild=True, **MICRO); assert capsys.readouterr().out      # the default shows the bar

def test_glyph_fracs_without_an_alphabet_named(tmp_path):
    "Fractions that leave a split empty raise before rendering, naming the fractions, the alphabets and a setting that works."
    from metanb.data.glyphs import load_glyphs
    with pytest.raises(ValueError, match=r"fracs=\(0\.1, 0\.2, 0\.7\) leave a split without an alphabet: there are 3 alphabets of sizes \[4, 4, 4\].*use e\.g\. fracs=\(0\.6, 0\.1, 0\.3\)"):
        load_glyphs(tmp_path, fracs=(0.1, 0.2, 0.7), progress=False, **MICRO)
    assert not list(tmp_path.glob('glyphs-*.pt'))
