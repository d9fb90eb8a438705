"""The built site in headless Chromium: every page of the table of contents loads without a
JavaScript console error, a missing image, a code block that scrolls sideways or a broken
internal link; screenshots of the intro
and the results page go to _build/screenshots/.

At a 1280 px and a 420 px window, every table and figure of every page is measured against
its column (:func:`test_every_table_and_figure_fits_its_column`): at 1280 px each one fits;
at 420 px a wider table scrolls inside its own box, which fits, and a finding's verdict is
in view without scrolling; no page scrolls sideways; a page executed with the ``demo`` profile
says so on its first screen; no page shows more than :data:`MAX_PROGRESS_LINES` consecutive
progress-bar lines. Every figure of an executed ``demo`` chapter carries the profile's mark in
its corner and is drawn at its display size, with no text under :data:`MIN_TEXT_PT` as shown
(:func:`test_every_figure_is_drawn_at_its_display_size`, from the executed notebooks that
the site publishes under ``_sources``).

Every page is judged only after it has settled (:data:`SETTLE_JS`, bounded by
:data:`SETTLE_S` seconds): the document loaded, every image finished (loaded or failed) and
MathJax's startup typesetting done. A busy machine then only makes the check slower, not flaky.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); skipped with the
install command otherwise. ``IUXRAY_TEST_SITE=<folder with index.html>`` checks an already built
site instead of building one (for repeating the browser check alone).
"""

import functools
import http.server
import json
import os
import re
import shutil
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest

from helpers.config import REPO_ROOT

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="headless browser check needs Chromium: sudo apt-get install chromium chromium-driver")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(errors="replace"))
    return p


def _toc_pages() -> list[str]:
    import yaml

    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
    walk(toc.get("parts", []))
    return [f"{p}.html" for p in pages]


SETTLE_S = 60
"""Upper bound (seconds) on waiting for a page to settle before it is judged."""

SETTLE_JS = """
const limitMs = arguments[0], done = arguments[arguments.length - 1], t0 = Date.now();
for (const img of document.images) { if (img.loading === 'lazy') img.loading = 'eager'; }
function afterMathJax(cb) {
  const MJ = window.MathJax;
  // (MathJax 2 waits on a callback's return value: return nothing from these, or they deadlock)
  if (MJ && MJ.Hub && MJ.Hub.Register) {
    MJ.Hub.Register.StartupHook('End', () => { MJ.Hub.Queue(() => { cb('v2'); }); });
  }
  else if (MJ && MJ.startup && MJ.startup.promise) { MJ.startup.promise.then(() => cb('v3'), () => cb('v3')); }
  else { cb(MJ ? 'unknown' : 'none'); }
}
let finished = false;
function finish(settled, mathjax) {
  if (!finished) { finished = true; done({settled: settled, mathjax: mathjax, ms: Date.now() - t0}); }
}
setTimeout(() => finish(false, 'still typesetting'), limitMs);  // the whole wait is bounded
(function poll() {
  const loaded = document.readyState === 'complete' && Array.from(document.images).every(i => i.complete);
  if (loaded) { afterMathJax(m => finish(true, m)); }
  else if (!finished) { setTimeout(poll, 100); }
})();
"""
"""Resolves when the page has loaded, every image is complete and MathJax's startup typesetting
(version 2's ``End`` hook, then its queue; version 3's startup promise) has finished; or, at the
latest, after ``limitMs`` with ``settled: false`` (and what it was still waiting for)."""


def settle(browser, url: str) -> dict:
    """Open ``url`` and wait (bounded by :data:`SETTLE_S`) until it has settled; returns the
    script's report ``{settled, mathjax, ms}``."""
    browser.get(url)
    browser.set_script_timeout(SETTLE_S + 15)
    return browser.execute_async_script(SETTLE_JS, SETTLE_S * 1000)


@pytest.fixture(scope="module")
def site(request):
    prebuilt = os.environ.get("IUXRAY_TEST_SITE")
    html = Path(prebuilt) if prebuilt else request.getfixturevalue("built_book") / "_build" / "html"
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

    handler = functools.partial(Quiet, directory=str(html))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield html, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1600"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


WIDE_CODE_JS = """
return Array.from(document.querySelectorAll('div.highlight pre'))
  .filter(p => !p.closest('.cell_output') && p.scrollWidth > p.clientWidth + 1)
  .map(p => [p.scrollWidth, p.clientWidth, p.textContent.trim().split('\\n')[0].slice(0, 60)]);
"""
"""Code blocks (chapter cells and the helpers shown beside the equations, not cell outputs)
whose content is wider than the block: a reader would have to scroll sideways."""


def test_every_page_loads_cleanly(site, browser):
    html, base = site
    shots = REPO_ROOT / "_build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    problems = []
    for page in _toc_pages():
        assert (html / page).is_file(), f"{page} missing from the built site"
        state = settle(browser, urljoin(base, page))
        if not state["settled"]:
            problems.append(f"{page}: did not settle within {SETTLE_S} s (images or MathJax still loading)")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        problems += [f"{page}: console error: {e['message']}" for e in errors]
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
            ".map(i => i.getAttribute('src'))")
        problems += [f"{page}: image did not load: {src}" for src in broken]
        wide = browser.execute_script(WIDE_CODE_JS)
        problems += [f"{page}: code block scrolls sideways ({w} > {c} px): {text!r}"
                     for w, c, text in wide]
        if page in ("book/intro.html", "book/chapters/07_results.html"):
            browser.save_screenshot(str(shots / (Path(page).stem + ".png")))
    assert not problems, "\n".join(problems)


WIDTHS = (1280, 420)
"""Window widths the pages are measured at: a laptop and a phone."""
MAX_PROGRESS_LINES = 5
"""A page may show a few progress lines (a summary); more is a progress bar's wall of text."""

MEASURE_JS = """
const article = document.querySelector('article.bd-article') || document.querySelector('main');
const cs = getComputedStyle(article), ar = article.getBoundingClientRect();
const col = {left: ar.left + parseFloat(cs.paddingLeft), right: ar.right - parseFloat(cs.paddingRight)};
function scrollBox(el) {
  for (let b = el.parentElement; b && b !== article; b = b.parentElement) {
    const o = getComputedStyle(b).overflowX;
    if (o === 'auto' || o === 'scroll') return b;
  }
  return null;
}
function name(el, i) {
  if (el.tagName === 'TABLE') {
    const head = Array.from(el.querySelectorAll('thead th, tr:first-child th')).slice(0, 4)
      .map(th => th.textContent.trim()).filter(t => t).join(' | ');
    return `table ${i + 1} (${head.slice(0, 70)})`;
  }
  return `figure ${i + 1} (${(el.getAttribute('src') || el.getAttribute('alt') || el.tagName).slice(-60)})`;
}
const items = [];
const tables = Array.from(article.querySelectorAll('table'));
const figures = Array.from(article.querySelectorAll('img, svg'))
  .filter(e => !e.closest('svg svg, .MathJax, .MathJax_Display, .MathJax_SVG, mjx-container, button, a.headerlink'));
for (const [kind, list] of [['table', tables], ['figure', figures]]) {
  list.forEach((el, i) => {
    const r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) return;  // not displayed (a folded cell)
    const box = scrollBox(el), b = box ? box.getBoundingClientRect() : null;
    const verdicts = kind === 'table' ? Array.from(el.querySelectorAll('td[data-label="verdict"]'))
      .map(td => td.getBoundingClientRect())
      .filter(v => v.width > 0)
      .map(v => [v.left, v.right]) : [];
    items.push({kind: kind, name: name(el, i), left: r.left, right: r.right, width: r.width,
                box: b ? [b.left, b.right] : null, verdicts: verdicts});
  });
}
const stamps = article.querySelectorAll('.stamp[data-profile="demo"]').length;
const banner = article.querySelector('.profile-banner.at-top');
const progress = Array.from(article.querySelectorAll('div.cell_output pre, div.output pre'))
  .map(p => p.textContent);
return {col: [col.left, col.right], page: [document.documentElement.scrollWidth, window.innerWidth],
        items: items, demo_stamps: stamps, progress: progress,
        banner: banner ? [banner.getBoundingClientRect().top, window.innerHeight, banner.textContent] : null};
"""
"""Every table and figure of the page's article with its box, its scroll box (the nearest
ancestor that scrolls sideways) and, for a findings table, where its verdict cells are; the
column's content box; whether the page scrolls sideways; the demo banner; the text outputs."""

PROGRESS_LINE = re.compile(r"\d+%\|.*\||\d+/\d+ \[[\d:]+<|[\d.]+(?:it|s)/(?:s|it)\b")
"""A line of a tqdm-style progress bar (``40%|####  | 4/10 [00:01<00:02, 3.1it/s]``)."""


def progress_runs(text: str) -> int:
    """The longest run of consecutive progress-bar lines in ``text`` (carriage returns split
    lines, as a console would show them)."""
    best = run = 0
    for line in re.split(r"[\r\n]+", text):
        run = run + 1 if PROGRESS_LINE.search(line) else 0
        best = max(best, run)
    return best


def column_problems(page: str, width: int, m: dict) -> list[str]:
    """What does not fit on one page at one window width (see the module's docstring)."""
    left, right = m["col"]
    out = []
    if m["page"][0] > m["page"][1] + 1:
        out.append(f"{page} at {width} px: the page scrolls sideways "
                   f"({m['page'][0]} > {m['page'][1]} px)")
    for it in m["items"]:
        where = f"{page} at {width} px: {it['name']}"
        fits = it["left"] >= left - 1 and it["right"] <= right + 1
        if width >= 1000 and not fits:
            out.append(f"{where} is {it['width']:.0f} px wide, its column {right - left:.0f} px")
            continue
        box = it["box"]
        if not fits and not (box and box[0] >= left - 1 and box[1] <= right + 1):
            out.append(f"{where} ({it['width']:.0f} px) leaves its column ({right - left:.0f} px)"
                       " and no box of its own scrolls it")
        view = (max(left, box[0]) if box else left, min(right, box[1]) if box else right)
        hidden = [v for v in it["verdicts"] if v[0] < view[0] - 1 or v[1] > view[1] + 1]
        if hidden:
            out.append(f"{where}: {len(hidden)} verdict cell(s) out of view without scrolling")
    return out


@pytest.mark.parametrize("width", WIDTHS)
def test_every_table_and_figure_fits_its_column(site, browser, width):
    html, base = site
    browser.set_window_size(width, 1000)
    problems = []
    try:
        for page in _toc_pages():
            settle(browser, urljoin(base, page))
            m = browser.execute_script(MEASURE_JS)
            problems += column_problems(page, width, m)
            if m["demo_stamps"]:
                b = m["banner"]
                if not b:
                    problems.append(f"{page} at {width} px: executed with the demo profile, but"
                                    " no demo banner under its title")
                elif b[0] > b[1]:
                    problems.append(f"{page} at {width} px: the demo banner is below the first "
                                    f"screen (top {b[0]:.0f} px, window {b[1]} px)")
            worst = max((progress_runs(t) for t in m["progress"]), default=0)
            if worst > MAX_PROGRESS_LINES:
                problems.append(f"{page}: {worst} consecutive progress-bar lines "
                                f"(at most {MAX_PROGRESS_LINES})")
    finally:
        browser.set_window_size(1280, 1600)
    assert not problems, "\n".join(problems)


MIN_TEXT_PT = 9.0
"""Smallest text a figure may show, in pt as shown on the page."""
PENDING_FIGURES = {"04_fine_tune": "its figures are redrawn by the chapter's owner (issue 24, "
                                   "item 8)"}
"""Chapters whose figures are not yet checked, and why."""


def _figure_reports(nb: dict):
    """The :func:`helpers.book.stamp.figure_report` of every figure a notebook shows (``None`` for a
    figure shown before the stamp)."""
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if any(k.endswith("image/png") for k in out.get("data", {})):
                yield out.get("metadata", {}).get("image/png", {}).get("book_figure")


def test_every_figure_is_drawn_at_its_display_size(site):
    from helpers.book.stamp import COLUMN_PX, PROFILE_MARKS

    html, _ = site
    problems, checked = [], 0
    for path in sorted((html / "_sources" / "book" / "chapters").glob("0*.ipynb")):
        nb = json.loads(path.read_text())
        if 'data-profile=\\"demo\\"' not in json.dumps(nb) or path.stem in PENDING_FIGURES:
            continue
        for i, rep in enumerate(_figure_reports(nb), start=1):
            where, checked = f"{path.stem}, figure {i}", checked + 1
            if rep is None:
                problems.append(f"{where}: shown before the stamp (no mark, no report)")
                continue
            if rep["mark"] != PROFILE_MARKS["demo"]:
                problems.append(f"{where}: no demo mark in its corner")
            if rep["width_px"] > COLUMN_PX:
                problems.append(f"{where}: drawn {rep['width_px']} px wide, shown at {COLUMN_PX}"
                                " px (draw it at its display size)")
            if rep["min_text_pt"] is not None and rep["min_text_pt"] < MIN_TEXT_PT:
                problems.append(f"{where}: text at {rep['min_text_pt']} pt as shown (at least "
                                f"{MIN_TEXT_PT})")
    assert checked, "no figure of a demo chapter found under _sources"
    assert not problems, "\n".join(problems)


def test_math_renders_from_the_local_mathjax(site, browser):
    html, base = site
    assert (html / "_static" / "mathjax" / "MathJax.js").is_file()
    state = settle(browser, urljoin(base, "book/chapters/02_zero_shot.html"))
    assert state["settled"] and state["mathjax"] == "v2", state
    rendered = browser.execute_script(
        "return document.querySelectorAll('.MathJax, .MathJax_Display, mjx-container').length")
    assert rendered > 0, "no equation was typeset by MathJax"
    unrendered = browser.execute_script(
        "return document.querySelectorAll('.MathJax_Error, .MathJax_Preview:not(:empty)').length")
    assert unrendered == 0, f"{unrendered} equation(s) failed to typeset"


def test_internal_links_resolve(site):
    html, _ = site
    broken = []
    for page in _toc_pages():
        src = html / page
        for href in _parse(src).links:
            u = urlparse(href)
            if u.scheme or href.startswith(("mailto:", "//", "javascript:")):
                continue  # external: not checked offline
            target = src if not u.path else (src.parent / unquote(u.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{page}: {href} (no such file)")
            elif u.fragment and target.suffix == ".html" and u.fragment not in _parse(target).ids:
                broken.append(f"{page}: {href} (no element with id {u.fragment!r})")
    assert not broken, "\n".join(broken)
