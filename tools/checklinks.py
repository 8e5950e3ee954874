"""Check the internal links of a static site: every relative href/src in every HTML file must exist.

    python tools/checklinks.py _docs            # exit 1 and list the broken links
    python tools/checklinks.py _docs --anchors  # also check #fragments that point into the site's pages

External links (http:, https:, mailto:, ...) are not followed: the site must work offline.
"""
from __future__ import annotations
import argparse, sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

_ATTRS = {'href', 'src'}

class _Links(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links, self.ids = [], set()
    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in _ATTRS and v: self.links.append((tag, k, v.strip()))
            if k in ('id', 'name') and v: self.ids.add(v)

def _parse(f: Path) -> _Links:
    p = _Links(); p.feed(f.read_text(encoding='utf-8', errors='replace')); return p

def check(site, anchors: bool = False) -> list[str]:
    "Broken internal links of the site at `site`, as 'page: tag attr=\"link\" (why)' strings; [] when all resolve."
    site = Path(site).resolve()
    if not site.is_dir(): return [f'{site}: not a folder (build the site first: python tools/docs.py)']
    pages = sorted(site.rglob('*.html'))
    if not pages: return [f'{site}: no HTML files']
    parsed = {f: _parse(f) for f in pages}
    bad = []
    for f, p in parsed.items():
        rel_page = f.relative_to(site)
        for tag, attr, link in p.links:
            u = urlsplit(link)
            if u.scheme or link.startswith('//'): continue          # external (or data:, mailto:, javascript:)
            if not u.path:                                          # '#frag' or '?q': same page
                if anchors and u.fragment and unquote(u.fragment) not in p.ids:
                    bad.append(f'{rel_page}: {tag} {attr}="{link}" (no id "{u.fragment}" on this page)')
                continue
            target = (f.parent/unquote(u.path)).resolve()
            if u.path.endswith('/') or target.is_dir(): target = target/'index.html'
            try: target.relative_to(site)
            except ValueError:
                bad.append(f'{rel_page}: {tag} {attr}="{link}" (points outside the site)'); continue
            if not target.exists():
                bad.append(f'{rel_page}: {tag} {attr}="{link}" (missing {target.relative_to(site)})'); continue
            if anchors and u.fragment and target.suffix == '.html':
                ids = parsed[target].ids if target in parsed else _parse(target).ids
                if unquote(u.fragment) not in ids:
                    bad.append(f'{rel_page}: {tag} {attr}="{link}" (no id "{u.fragment}" in {target.relative_to(site)})')
    return bad

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('site', nargs='?', default='_docs', type=Path, help='the built site (default: _docs)')
    ap.add_argument('--anchors', action='store_true', help='also check #fragments')
    a = ap.parse_args()
    bad = check(a.site, anchors=a.anchors)
    n = len(list(a.site.rglob('*.html'))) if a.site.is_dir() else 0
    if bad:
        print(f'{len(bad)} broken internal link(s) in {a.site}:', *bad, sep='\n  ', file=sys.stderr)
        sys.exit(1)
    print(f'{a.site}: all internal links of {n} pages resolve' + (' (anchors too)' if a.anchors else ''))

if __name__ == '__main__': main()
