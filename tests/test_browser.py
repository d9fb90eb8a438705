"""The built site in headless Chromium: every page of the table of contents loads without a
JavaScript console error, a missing image, a code block that scrolls sideways or a broken
internal link; screenshots of the intro
and the results page go to _build/screenshots/.

Every page is judged only after it has settled (:data:`SETTLE_JS`, bounded by
:data:`SETTLE_S` seconds): the document loaded, every image finished (loaded or failed) and
MathJax's startup typesetting done. A busy machine then only makes the check slower, not flaky.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them); skipped with the
install command otherwise. ``IUXRAY_TEST_SITE=<folder with index.html>`` checks an already built
site instead of building one (for repeating the browser check alone).
"""

import functools
import http.server
import os
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
    threading.Thread(target=srv.serve_forever, daemon=True).start()
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
