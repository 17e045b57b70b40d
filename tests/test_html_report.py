"""report.html (cotdsl/html_report.py) of a real tiny run: written by `cotdsl run` and `cotdsl
report`, self-contained (no external reference, checked by parsing the HTML and by watching every
request a real browser makes), escaped, and rendered by headless Chromium without a console error
into a page whose tables and figures are visibly there.

Chromium: `scripts/chromium-ensure` finds it or installs Debian's `chromium` (`make test` runs it
first). Where it cannot (exit 3: not root, no apt-get, apt failed) the browser tests skip with
its reason, or fail when COTDSL_REQUIRE_CHROMIUM=1 (set by `make test` when it had a browser).
"""
from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from cotdsl.errors import CotError
from cotdsl.html_report import render, write
from cotdsl.run import EXIT_OK, report, run

ROOT = Path(__file__).resolve().parent.parent
EVIL = '<script>alert("x")</script> & <img src="http://example.com/x.png">'
SPEC = f"""# {EVIL}
experiment tiny_html {{
  seeds 0, 1
  data    toy  = builtin("facts", train: 16, test: 8)
  teacher gold = gold
  student t    = tiny(arch: "llama", layers: 2, d_model: 32, heads: 4)
  target none   = label
  target after  = label -> rationale
  train {{ epochs: 1, lr: 3e-3, batch: 8 }}
  eval  {{ by: auto }}
  probe {{ lens: logit; examples: 4 }}
  expect after > none
}}
"""


# ---- a real tiny run ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("html")
    spec = root / "tiny_html.cot"
    spec.write_text(SPEC)
    assert run(spec, out=root / "runs", cache=root / "cache", console=Console(file=io.StringIO())) == EXIT_OK
    return root / "runs" / "tiny_html"


def test_run_and_report_write_the_page(run_dir, tmp_path):
    page = run_dir / "report.html"
    assert page.exists(), "cotdsl run writes report.html"
    copy = tmp_path / "tiny_html"
    shutil.copytree(run_dir, copy)
    (copy / "report.html").unlink()
    assert report(copy, console=Console(file=io.StringIO()), png=False) == EXIT_OK
    html = (copy / "report.html").read_text()
    assert "<h1>tiny_html</h1>" in html
    summary = pl.read_parquet(run_dir / "summary.parquet")
    for r in summary.iter_rows(named=True):  # the numbers are summary.parquet's, as the terminal prints them
        assert f"{100 * r['acc']:.1f}" in html
        if r["delta"] is not None:
            assert f"[{100 * r['delta_lo']:+.1f}, {100 * r['delta_hi']:+.1f}]" in html
    verdict = pl.read_parquet(run_dir / "expectations.parquet")["verdict"][0]
    assert f'class="verdict v-{verdict}">{verdict}</span>' in html
    assert html.count('<td class="cell" style="background: #') >= 2 * 3  # 2 conditions x 3 layers (+ scale)
    assert html.count("data:image/png;base64,") == len(list((run_dir / "figures").glob("*.png"))) >= 3


def test_everything_from_the_run_is_escaped(run_dir):
    html = (run_dir / "report.html").read_text()
    assert EVIL not in html and "<script" not in html.lower()
    assert "# &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;img src=&#34;http://example.com/x.png&#34;&gt;" in html


class _Refs(HTMLParser):
    """Every URL an HTML page could load or link: URL attributes, CSS url()/@import in <style>
    and style attributes, <link>, <base>, <script src>, meta refresh."""

    URL_ATTRS = {"src", "href", "srcset", "poster", "data", "action", "formaction", "background", "xlink:href",
                 "manifest", "cite", "longdesc", "ping"}

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_style = tag == "style"
        for k, v in attrs:
            if v is None:
                continue
            if k in self.URL_ATTRS:
                self.urls += [u.strip().split()[0] for u in v.split(",") if u.strip()] if k == "srcset" else [v.strip()]
            elif k == "style":
                self._css(v)
            elif k == "content" and dict(attrs).get("http-equiv", "").lower() == "refresh":
                self.urls.append(v)

    def handle_endtag(self, tag):
        self._in_style = False if tag == "style" else self._in_style

    def handle_data(self, data):
        if self._in_style:
            self._css(data)

    def _css(self, css: str):
        self.urls += re.findall(r"url\(\s*['\"]?([^'\")]*)", css, re.I)
        self.urls += re.findall(r"@import\s+['\"]([^'\"]+)", css, re.I)


def external_refs(html: str) -> list[str]:
    p = _Refs()
    p.feed(html)
    bad = [u for u in p.urls if not (u.startswith("#") or u.startswith("data:"))]
    return bad + [f"<{t}>" for t in p.tags if t in ("link", "base", "script", "iframe", "object", "embed")]


def test_the_page_references_nothing_outside_itself(run_dir):
    html = (run_dir / "report.html").read_text()
    assert external_refs(html) == []
    assert html.count("<img ") >= 3 and 'content="default-src \'none\'; img-src data:' in html
    # the checker itself finds what it must refuse
    bad = ('<link rel="stylesheet" href="https://cdn.example/x.css"><img src="x.png" srcset="a.png 1x, data:, b.png 2x">'
           '<div style="background: url(\'http://e.x/bg.png\')"></div><style>@import "https://f/x.css";</style>'
           '<a href="#ok">in-page</a><img src="data:image/png;base64,AAAA">')
    assert external_refs(bad) == ["https://cdn.example/x.css", "x.png", "a.png", "b.png",
                                  "http://e.x/bg.png", "https://f/x.css", "<link>"]


def test_not_a_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CotError, match="not a cotdsl run folder"):
        write(tmp_path)


def test_a_run_with_only_a_summary_still_renders(run_dir, tmp_path):
    """A copied folder with just summary.parquet (no lens, expectations, figures, spec): the
    sections that have no data are left out, the page still renders."""
    (tmp_path / "bare").mkdir()
    shutil.copyfile(run_dir / "summary.parquet", tmp_path / "bare" / "summary.parquet")
    html = render(tmp_path / "bare")
    assert 'id="results"' in html and 'id="lens"' not in html and 'id="expectations"' not in html
    assert "No environment.json" in html and 'id="spec"' not in html and external_refs(html) == []


# ---- headless Chromium over the DevTools protocol (--remote-debugging-pipe) ---------------------
def chromium() -> str:
    """The browser's path from scripts/chromium-ensure; skip (or fail, under make test) where it
    cannot be had here."""
    r = subprocess.run([str(ROOT / "scripts" / "chromium-ensure")], capture_output=True, text=True, timeout=1800)
    reason = (r.stderr.strip().splitlines() or ["no reason given"])[-1]
    if r.returncode == 3:
        msg = f"no Chromium: {reason}"
        if os.environ.get("COTDSL_REQUIRE_CHROMIUM") == "1":
            pytest.fail(msg + " (COTDSL_REQUIRE_CHROMIUM=1)", pytrace=False)
        pytest.skip(msg)
    assert r.returncode == 0, f"scripts/chromium-ensure failed ({r.returncode}): {r.stderr.strip()}"
    return r.stdout.strip().splitlines()[-1]


class Browser:
    """One headless Chromium talking CDP over fds 3 (in) and 4 (out), messages ending in NUL."""

    def __init__(self, exe: str, profile: Path):
        self._to_r, self._to_w = os.pipe()
        self._from_r, self._from_w = os.pipe()
        args = ["--headless", "--disable-gpu", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        ends = (self._to_r, self._from_w)

        def to_3_and_4():  # in the child: our pipe ends become the fds Chromium reads and writes
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in ends]  # out of the way of 3 and 4
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)  # dup2 makes them inheritable; every other fd is close-on-exec

        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile / "chromium.log"  # a file, not a pipe: a chatty browser must never block on it
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([exe, *args], preexec_fn=to_3_and_4, close_fds=False,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        os.close(self._to_r)
        os.close(self._from_w)
        self._buf, self._id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._next(deadline - time.monotonic())
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for m in self.events:
            if m.get("method") == method:
                return m
        while True:
            m = self._next(deadline - time.monotonic())
            self.events.append(m)
            if m.get("method") == method:
                return m

    def drain(self, seconds: float) -> None:
        """Collect events for `seconds` (late console messages, requests)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._next(deadline - time.monotonic()))
        except TimeoutError:
            pass

    def _next(self, timeout: float) -> dict:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._from_r], [], [], max(0.0, timeout))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited: {self.log.read_text(errors='replace')[-2000:]}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # our own browser's process group
            self.proc.wait()
        for fd in (self._to_w, self._from_r):
            os.close(fd)


def load_page(exe: str, page: Path, profile: Path, width: int = 1200) -> dict:
    """Open `page` in headless Chromium; return its problems (console errors and warnings,
    uncaught exceptions, error log entries, requests for anything but the page and data: URIs),
    facts measured in the page, and a full-page PNG screenshot."""
    b = Browser(exe, profile)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            b.send(f"{domain}.enable", session=s)
        b.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                      "mobile": False}, session=s)
        b.send("Page.navigate", {"url": page.resolve().as_uri()}, session=s)
        b.wait_for("Page.loadEventFired")
        b.drain(1.0)
        facts = json.loads(b.send("Runtime.evaluate", {"returnByValue": True, "expression": """JSON.stringify({
            height: document.documentElement.scrollHeight,
            images: document.images.length,
            broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
            rects: Object.fromEntries(['table.results', 'table.expectations', 'table.heat', 'pre']
                .map(q => [q, document.querySelector(q)]).filter(([q, e]) => e)
                .map(([q, e]) => { const r = e.getBoundingClientRect();
                                   return [q, [r.left, r.top + window.scrollY, r.width, r.height]]; })),
            best: [...document.querySelectorAll('table.results strong')].map(e => e.textContent),
            cells: [...document.querySelectorAll('table.heat:not(.scale) td.cell')].map(e => {
                const r = e.getBoundingClientRect(); return [r.left, r.top + window.scrollY]; }),
        })"""}, session=s)["result"]["value"])
        height = min(facts["height"], 8000)
        b.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                      "mobile": False}, session=s)
        shot = b.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=s)
        b.drain(0.3)
    finally:
        b.close()
    problems = []
    for e in b.events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            problems.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p['args']]}")
        elif m == "Runtime.exceptionThrown":
            problems.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            problems.append(f"log {p['entry']['level']}: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            if not (url.startswith("data:") or url == page.resolve().as_uri()):
                problems.append(f"request: {url}")
    return {"problems": problems, "facts": facts, "png": base64.b64decode(shot["data"])}


@pytest.fixture(scope="module")
def browser() -> str:
    return chromium()


def _region(img, rect, height: int):
    left, top, w, h = (int(round(x)) for x in rect)
    return img.crop((left, top, min(left + w, img.width), min(top + h, height)))


def test_chromium_renders_the_page_without_errors(run_dir, browser, tmp_path):
    import numpy as np
    from PIL import Image

    got = load_page(browser, run_dir / "report.html", tmp_path / "profile")
    assert got["problems"] == []
    facts = got["facts"]
    assert facts["broken"] == [] and facts["images"] >= 3, facts
    assert set(facts["rects"]) == {"table.results", "table.expectations", "table.heat", "pre"}, facts
    acc = pl.read_parquet(run_dir / "summary.parquet")["acc"]
    assert facts["best"] and set(facts["best"]) == {f"{100 * acc.max():.1f}"}  # the best accuracy, bold
    shot = tmp_path / "report.png"
    shot.write_bytes(got["png"])
    if os.environ.get("COTDSL_SCREENSHOT"):  # to look at it: COTDSL_SCREENSHOT=/tmp/report.png pytest ...
        shutil.copyfile(shot, os.environ["COTDSL_SCREENSHOT"])
    img = Image.open(shot).convert("RGB")
    assert img.width == 1200 and img.height >= 900
    whole = np.asarray(img, dtype=float)
    assert whole.std() > 20  # not a blank page
    for q in ("table.results", "table.expectations", "pre"):  # text where the tables are: dark on light
        px = np.asarray(_region(img, facts["rects"][q], img.height).convert("L"), dtype=float)
        assert px.size > 0 and px.std() > 25, (q, px.std())
        assert (px < 100).mean() > 0.005 and (px > 200).mean() > 0.5, q
    from interp.report import SCALE

    shades = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in SCALE}
    assert len(facts["cells"]) == 2 * 3  # conditions x layers
    for x, y in facts["cells"]:  # each cell's corner (away from its digits) is painted in a shade of the scale
        corner = {tuple(px) for px in np.asarray(img.crop((int(x) + 2, int(y) + 2, int(x) + 6, int(y) + 5))).reshape(-1, 3)}
        assert len(corner) == 1 and corner <= shades, (x, y, corner)


def test_the_browser_check_sees_errors_and_outside_requests(browser, tmp_path):
    """The browser check can fail: a page with a console error, an exception and an external
    image is caught (the image by the request it makes, even where the network is off)."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><body><p>x</p><img src="http://127.0.0.1:9/x.png">'
                    '<script>console.error("boom"); null.f();</script></body></html>')
    got = load_page(browser, page, tmp_path / "profile")
    text = "\n".join(got["problems"])
    assert "console.error: ['boom']" in text and "exception:" in text and "request: http://127.0.0.1:9/x.png" in text
    assert got["facts"]["broken"] == ["" ]  # the image did not load
