"""The book and JupyterLab in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by selenium, with every host but localhost unreachable.

- The HTML book built from the smoke outputs: every page has its chapter's title, every image decodes,
  MathJax (served from the book's ``_static``) typesets every equation without error, the console holds no
  error, every internal link and citation resolves, nothing but code overflows a 375 px phone screen, and
  no request leaves localhost. Screenshots of every page go to ``_build/screenshots/``.
- JupyterLab, started by the command of ``make lab`` on a free port: a chapter is opened, its parameters
  cell is given ``profile = "smoke"`` by typing, its first cells are run with Shift+Enter, their outputs
  (text, a figure, a widget progress bar) appear, and the server shuts down cleanly.

Without Chromium the tests are skipped with the command that installs it; ``.ci/run`` installs it in CI.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import psutil
import pytest

from reidbook.book import REPO_ROOT, toc_chapters

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "headless Chromium is not installed: `sudo apt-get install chromium chromium-driver` "
        "(Debian/Ubuntu); .ci/run installs it when it runs as root",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extras: make install")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

SCREENSHOTS = REPO_ROOT / "_build" / "screenshots"
PHONE_WIDTH = 375
LAB_CHAPTER = "00_world_and_protocol.ipynb"
LAB_CELLS_TO_RUN = 4  # Shift+Enter presses from the parameters cell: it and the next three cells


# -- Chromium


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile, console and network logs, and no host but localhost."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",  # the network is off
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _requested_urls(driver: webdriver.Chrome) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _remote(urls: list[str]) -> list[str]:
    local = ("127.0.0.1", "localhost", "[::1]")
    return [
        u
        for u in urls
        if urlsplit(u).scheme in ("http", "https", "ws", "wss") and urlsplit(u).hostname not in local
    ]


def _wait(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the HTML book


@pytest.fixture
def served_book(smoke_html: Path) -> Iterator[str]:
    """The smoke HTML book served over http on a free local port; yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=smoke_html))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _expected_titles() -> dict[str, str]:
    """``book/<page>.html`` -> the first ``# `` heading of its source (index.md, a chapter's first cell)."""
    sources = {"book/index.html": (REPO_ROOT / "book" / "index.md").read_text()}
    for chapter in toc_chapters():
        cells = nbformat.read(REPO_ROOT / chapter, as_version=4).cells
        sources[str(chapter.with_suffix(".html"))] = next(
            c.source for c in cells if c.cell_type == "markdown"
        )
    titles = {}
    for page, text in sources.items():
        heading = re.search(r"^# (.+)$", text, re.M)
        assert heading, f"the source of {page} has no '# ' title"
        titles[page] = heading.group(1).strip()
    return titles


# Reads the page once images have decoded and MathJax has finished (it is loaded async where there is math).
PAGE_STATE_JS = """
const done = arguments[arguments.length - 1];
(async () => {
  for (const img of document.images) img.loading = "eager";
  await Promise.all([...document.images].map((img) => img.decode().catch(() => null)));
  const math = [...document.querySelectorAll(".math")];
  if (math.length) {
    const start = Date.now();
    while (!(window.MathJax && MathJax.startup && MathJax.startup.promise) && Date.now() - start < 30000) {
      await new Promise((r) => setTimeout(r, 100));
    }
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  }
  const h1 = document.querySelector("main h1") || document.querySelector("h1");
  return {
    title: document.title,
    h1: h1 ? h1.textContent.replace(/[#¶]\\s*$/, "").trim() : null,
    images: [...document.images].map((img) => [img.getAttribute("src"), img.naturalWidth]),
    mathjax: [...document.scripts].map((s) => s.src).filter((s) => /mathjax/i.test(s)),
    math: math.length,
    typeset: math.filter((m) => m.querySelector("mjx-container")).length,
    errors: [...document.querySelectorAll("mjx-merror")].map((e) => e.textContent),
    links: [...document.querySelectorAll("a[href]")].map((a) => a.href),
  };
})().then(done, (err) => done({failed: String(err)}));
"""

# Elements that stick out of the viewport, outside code cells and outside containers that scroll or clip.
OVERFLOW_JS = """
const width = document.documentElement.clientWidth;
const bad = [];
for (const el of document.body.querySelectorAll("*")) {
  if (el.closest("pre, .highlight, .cell_input, .output.text_plain, .output.stream")) continue;
  const box = el.getBoundingClientRect();
  const style = getComputedStyle(el);
  if (box.width === 0 || box.height === 0 || style.visibility === "hidden") continue;
  if (box.right <= width + 1) continue;
  let contained = false;
  for (let p = el.parentElement; p && p !== document.body; p = p.parentElement) {
    if (getComputedStyle(p).overflowX !== "visible" && p.getBoundingClientRect().right <= width + 1) {
      contained = true;
      break;
    }
  }
  if (!contained) bad.push(`${el.tagName.toLowerCase()}.${el.className} right=${Math.round(box.right)}`);
}
return {width: width, scrollWidth: document.documentElement.scrollWidth, bad: bad.slice(0, 8)};
"""


def _ids_of(page: Path, cache: dict[Path, set[str]]) -> set[str]:
    if page not in cache:
        cache[page] = set(re.findall(r'\bid="([^"]+)"', page.read_text()))
    return cache[page]


def _broken_links(links: list[str], base: str, root: Path, cache: dict[Path, set[str]]) -> list[str]:
    broken = []
    for link in links:
        if not link.startswith(base):
            continue  # another site, a mailto:, a javascript: link
        parts = urlsplit(link)
        path = root / unquote(parts.path.removeprefix(urlsplit(base).path))
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            broken.append(f"{link} (no file {path.relative_to(root)})")
        elif (
            parts.fragment and path.suffix == ".html" and unquote(parts.fragment) not in _ids_of(path, cache)
        ):
            broken.append(f"{link} (no id {parts.fragment!r} in {path.relative_to(root)})")
    return broken


@pytest.mark.notebook
def test_book_pages_render_offline_in_chromium(browser, served_book, smoke_html):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    titles = _expected_titles()
    ids: dict[Path, set[str]] = {}
    problems: list[str] = []
    for page, title in titles.items():
        name = Path(page).stem
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        browser.get(served_book + page)
        state = browser.execute_async_script(PAGE_STATE_JS)
        assert "failed" not in state, f"{page}: {state}"
        browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))
        if state["h1"] != title or not state["title"].startswith(title):
            problems.append(f"{page}: title {state['title']!r}, heading {state['h1']!r}; expected {title!r}")
        problems += [f"{page}: image {src} did not decode" for src, width in state["images"] if width == 0]
        if state["math"]:
            if state["typeset"] != state["math"] or state["errors"]:
                problems.append(
                    f"{page}: MathJax typeset {state['typeset']} of {state['math']} equations, "
                    f"errors {state['errors']}"
                )
            if not state["mathjax"] or not all(
                s.startswith(served_book + "_static/") for s in state["mathjax"]
            ):
                problems.append(f"{page}: MathJax is not loaded from the book's _static: {state['mathjax']}")
            browser.execute_script("document.querySelector('div.math, .math').scrollIntoView()")
            browser.save_screenshot(str(SCREENSHOTS / f"{name}-math.png"))
        if not any(link.startswith(served_book) for link in state["links"]):
            problems.append(f"{page}: no internal link at all (not even the table of contents)")
        problems += [
            f"{page}: broken link {b}" for b in _broken_links(state["links"], served_book, smoke_html, ids)
        ]
        console = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        problems += [f"{page}: console error {m}" for m in console]
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": PHONE_WIDTH, "height": 800, "deviceScaleFactor": 1, "mobile": True},
        )
        browser.get(served_book + page)  # loaded again, as a phone would
        browser.execute_async_script(PAGE_STATE_JS)
        overflow = browser.execute_script(OVERFLOW_JS)
        browser.save_screenshot(str(SCREENSHOTS / f"{name}-phone.png"))
        if overflow["width"] != PHONE_WIDTH or overflow["scrollWidth"] > PHONE_WIDTH or overflow["bad"]:
            problems.append(f"{page}: at {PHONE_WIDTH} px wide, sticking out: {overflow}")
        problems += [f"{page}: request to {u}" for u in _remote(_requested_urls(browser))]
    assert not problems, "\n".join(problems)


# -- JupyterLab


@pytest.fixture
def lab_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """JupyterLab started as ``make lab`` starts it (``python -m reidbook.book --lab``), with a port, a token
    and no browser, autosave off and fresh settings; yields its URL and process; restores the chapter."""
    port, token = _free_port(), "reidbook-browser-test"
    settings = tmp_path / "lab-settings"
    for plugin, values in (
        ("docmanager-extension/plugin", {"autosave": False}),
        ("apputils-extension/notification", {"fetchNews": "false"}),
    ):
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = dict(
        os.environ,
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "lab-workspaces"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
        REIDBOOK_RESULTS=str(tmp_path / "results"),
    )
    env.pop("REIDBOOK_PROGRESS", None)
    chapter = REPO_ROOT / "book" / LAB_CHAPTER
    original = chapter.read_bytes()
    checkpoints = REPO_ROOT / "book" / ".ipynb_checkpoints"
    had_checkpoints = checkpoints.exists()
    command = [sys.executable, "-m", "reidbook.book", "--lab", "--port", str(port), "--no-browser"]
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen([*command, "--token", token], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(
            lambda: _answers(f"{url}/api/status?token={token}") or server.poll() is not None,
            120,
            "JupyterLab",
        )
        assert server.poll() is None, f"JupyterLab exited: {(tmp_path / 'lab.log').read_text()[-3000:]}"
        yield f"{url}/lab/tree/{LAB_CHAPTER}?token={token}", server
    finally:
        try:
            _stop(server)
        finally:
            log.close()
            if not had_checkpoints and checkpoints.exists():
                shutil.rmtree(checkpoints)
            if chapter.read_bytes() != original:
                chapter.write_bytes(original)
                pytest.fail(f"JupyterLab wrote to {chapter} (restored): autosave should be off")


def _stop(server: subprocess.Popen) -> None:
    """Terminate the server if the test did not shut it down, killing it if it does not exit."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


# The kernel's name once the notebook shows all its cells and the status bar says "<kernel> | Idle".
KERNEL_JS = """
if (document.querySelectorAll(".jp-Notebook .jp-Cell").length !== arguments[0]) return null;
for (const item of document.querySelectorAll(".jp-StatusBar-TextItem")) {
  const match = item.textContent.match(/^(.+) \\| Idle$/);
  if (match) return match[1];
}
return null;
"""

# Cells of the open notebook: their type, prompt ("[3]:", "[*]:"), output text, images and widgets.
CELLS_JS = """
return [...document.querySelectorAll(".jp-Notebook .jp-Cell")].map((cell) => ({
  code: cell.classList.contains("jp-CodeCell"),
  prompt: (cell.querySelector(".jp-InputPrompt") || {}).textContent || "",
  text: [...cell.querySelectorAll(".jp-OutputArea-output")].map((o) => o.textContent).join("\\n"),
  errors: cell.querySelectorAll("[data-mime-type*='stderr'], [data-mime-type*='error']").length,
  images: [...cell.querySelectorAll(".jp-OutputArea-output img")].map((img) => img.naturalWidth),
  widgets: cell.querySelectorAll(".jp-OutputArea-output [class*='progress']").length,
}));
"""


def _keys(browser: webdriver.Chrome, *keys: str, shift: bool = False) -> None:
    chain = webdriver.ActionChains(browser)
    if shift:
        chain.key_down(Keys.SHIFT)
    for key in keys:
        chain.send_keys(key)
    if shift:
        chain.key_up(Keys.SHIFT)
    chain.perform()


def test_jupyterlab_runs_a_chapter_through_the_ui(browser, lab_server):
    url, server = lab_server
    browser.get(url)
    expected_cells = len(nbformat.read(REPO_ROOT / "book" / LAB_CHAPTER, as_version=4).cells)
    kernel = _wait(
        lambda: browser.execute_script(KERNEL_JS, expected_cells), 180, "the chapter and an idle kernel"
    )
    cells = browser.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")
    parameters = next(i for i, c in enumerate(cells) if "jp-CodeCell" in c.get_attribute("class"))
    cells[parameters].find_element(By.CSS_SELECTOR, ".cm-content").click()
    _keys(browser, Keys.CONTROL + Keys.END, Keys.ENTER, 'profile = "smoke"  # typed by the browser test')
    for _ in range(LAB_CELLS_TO_RUN):
        _keys(browser, Keys.ENTER, shift=True)
    ran = [
        parameters + i
        for i in range(LAB_CELLS_TO_RUN)
        if browser.execute_script(CELLS_JS)[parameters + i]["code"]
    ]
    _wait(
        lambda: all(re.fullmatch(r"\[\d+\]:", browser.execute_script(CELLS_JS)[i]["prompt"]) for i in ran),
        240,
        f"cells {ran} to finish",
    )
    # A cell of one's own below the last one run: the parameter took effect, and tqdm draws a widget.
    _keys(browser, Keys.ESCAPE, "b", Keys.ENTER)
    _keys(browser, "from reidbook.progress import progress_mode, tqdm", Keys.ENTER)
    _keys(
        browser, 'print("profile:", profile, "| progress:", progress_mode(), "| sum:", sum(tqdm(range(5))))'
    )
    _keys(browser, Keys.ENTER, shift=True)
    mine = parameters + LAB_CELLS_TO_RUN + 1
    _wait(lambda: "sum: 10" in browser.execute_script(CELLS_JS)[mine]["text"], 60, "the typed cell's output")
    state = browser.execute_script(CELLS_JS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "jupyterlab.png"))
    assert "profile: smoke | progress: widget | sum: 10" in state[mine]["text"]
    assert state[mine]["widgets"] > 0, "tqdm did not render as a widget in JupyterLab"
    assert any(state[i]["text"].strip() for i in ran), f"no visible output in cells {ran}"
    assert any(w > 0 for i in ran for w in state[i]["images"]), f"no figure drawn by cells {ran}"
    assert not any(state[i]["errors"] for i in [*ran, mine]), [state[i]["text"] for i in ran]
    assert not any("Warning" in state[i]["text"] for i in [*ran, mine]), [state[i]["text"] for i in ran]
    print(f"\nJupyterLab ran {LAB_CHAPTER} in the kernel {kernel.strip()!r}")
    assert not _remote(_requested_urls(browser)), _remote(_requested_urls(browser))
    kernels = psutil.Process(server.pid).children(recursive=True)
    assert kernels, "no kernel process under the JupyterLab server"
    # Stop as File > Shut Down does, through the server's API: kernels first, then the server.
    token = re.search(r"token=([^&]+)", url).group(1)
    request = urllib.request.Request(
        url.split("/lab/")[0] + "/api/shutdown", method="POST", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status in (200, 204)
    assert server.wait(60) == 0, "JupyterLab did not exit cleanly"
    gone, alive = psutil.wait_procs(kernels, timeout=30)
    assert not alive, f"kernel processes left running: {alive}"
