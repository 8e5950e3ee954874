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
