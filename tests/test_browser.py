"""The widgets in a real browser: JupyterLab on 127.0.0.1, Debian's chromium driven by Playwright.

For the structure explorer (``05_explorer.ipynb``) and BAR's transition slider (``04_bar.ipynb``):
open the notebook, await JupyterLab's readiness promises (``app.started``, ``app.restored``, the
notebook's ``context.ready`` and ``sessionContext.ready``), run all cells (``ci`` scale), move a
widget and assert that the rendered label and figure changed; a screenshot goes to ``out/browser/``.

Chromium is installed from Debian's archive when it is missing (``apt-get install chromium``; the
browser is never downloaded otherwise). If it cannot be installed the tests skip with one line saying
why (shown by ``make test``, which runs pytest with ``-rs``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "out" / "browser"
CHROMIUM = "/usr/bin/chromium"


def _chromium() -> str:
    """The chromium binary, installed with apt-get when missing; skip (one line) when that fails."""
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("browser test skipped: chromium is not installed and apt-get is not available to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or ["no message"])[-1][:160]
            pytest.skip(f"browser test skipped: chromium could not be installed ({' '.join(cmd)} exited "
                        f"{r.returncode}: {why})")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("browser test skipped: apt-get installed chromium but no chromium binary is on PATH")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 (empty token) over the notebooks, at ci scale."""
    pytest.importorskip("playwright", reason="browser test skipped: playwright is not installed (pip install "
                                             "'prunelab[test]')")
    exe = _chromium()
    port = _free_port()
    work = tmp_path_factory.mktemp("lab")
    for name in ("05_explorer.ipynb", "04_bar.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, work / name)  # run copies: the committed notebooks stay as they are
    # user settings of this server only: every cell stays in the page (JupyterLab 4 otherwise renders only the
    # cells in view, so a widget further down would never become visible) and no news pop-up
    settings = work / "settings"
    for ext, name, value in (("notebook-extension", "tracker", {"windowingMode": "none"}),
                             ("apputils-extension", "notification", {"fetchNews": "false"})):
        (settings / "@jupyterlab" / ext).mkdir(parents=True, exist_ok=True)
        (settings / "@jupyterlab" / ext / f"{name}.jupyterlab-settings").write_text(json.dumps(value))
    env = {**os.environ, "PRUNELAB_SCALE": "ci", "PRUNELAB_RUNS": "", "OMP_NUM_THREADS": "1",
           "PRUNELAB_OUT": str(work / "figures"), "JUPYTER_CONFIG_DIR": str(work / "config"),
           "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    log = open(work / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
                             "--ip=127.0.0.1", f"--port={port}", "--IdentityProvider.token=",
                             "--ServerApp.password=", "--LabApp.expose_app_in_browser=True",
                             f"--ServerApp.root_dir={work}"], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"JupyterLab did not start within 120 s; see {work / 'lab.log'}")
    if proc.poll() is not None:
        pytest.fail(f"JupyterLab exited with {proc.returncode}; see {work / 'lab.log'}")
    yield {"url": f"http://127.0.0.1:{port}", "exe": exe, "work": work}
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _run_notebook(page, url: str, name: str, timeout_s: float = 600):
    """Open ``name`` in JupyterLab, await its readiness, run all cells; returns the seconds it took."""
    t0 = time.time()
    workspace = name.split(".")[0].replace("_", "-")  # a workspace of its own: no other notebook restored
    page.goto(f"{url}/lab/workspaces/{workspace}/tree/{name}")
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=120_000)
    page.evaluate("""async (name) => {
        const app = window.jupyterapp;
        await app.started;
        await app.restored;
        const nb = await app.commands.execute('docmanager:open', {path: name});
        app.shell.activateById(nb.id);
        await nb.context.ready;
        await nb.sessionContext.ready;
    }""", name)
    ok = page.evaluate("""async (name) => {
        const app = window.jupyterapp;
        const nb = app.shell.currentWidget;
        if (!nb || nb.context.path !== name) { throw new Error('the current widget is not ' + name); }
        return await app.commands.execute('notebook:run-all-cells');
    }""", name)
    # run-all resolves when every cell has run; then the kernel goes idle
    page.wait_for_function("""() => {
        const nb = window.jupyterapp.shell.currentWidget;
        const k = nb.sessionContext.session && nb.sessionContext.session.kernel;
        return k && k.status === 'idle';
    }""", timeout=int(timeout_s * 1000))
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] :text('Traceback')")
    assert ok is not False, f"{name}: a cell failed"
    assert errors.count() == 0, f"{name}: a cell raised"
    return time.time() - t0


def _browser(lab):
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=lab["exe"], headless=True,
                                 args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(600_000)
    return pw, browser, page


def test_explorer_widget_reacts_in_jupyterlab(lab):
    pw, browser, page = _browser(lab)
    try:
        took = _run_notebook(page, lab["url"], "05_explorer.ipynb")
        # the explorer's label: its networks' accuracy and cost, or (after the notebook's export) the export
        label = page.locator(".widget-label", has_text=re.compile("M MACs|exported")).first
        label.wait_for()
        before = label.inner_text()
        figure = page.locator(".jp-OutputArea-output img").first
        src_before = figure.get_attribute("src")
        select = page.locator(".widget-dropdown select").first  # the "network" dropdown
        options = select.locator("option").all_inner_texts()
        current = select.input_value()
        target = next(o for o in options if o != current)
        select.select_option(label=target)
        page.wait_for_function("([el, old]) => el.innerText !== old", arg=[label.element_handle(), before],
                               timeout=60_000)
        after = label.inner_text()
        assert after != before and target.replace("\xa0", " ") in after and "M MACs" in after
        page.wait_for_timeout(500)
        assert page.locator(".jp-OutputArea-output img").first.get_attribute("src") != src_before
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "05_explorer.png"), full_page=False)
        print(f"\n05_explorer.ipynb ran in JupyterLab in {took:.0f} s; label before: {before[:90]!r}; after: "
              f"{after[:90]!r}; screenshot {SHOTS / '05_explorer.png'}")
    finally:
        browser.close()
        pw.stop()


def test_bar_transition_slider_reacts_in_jupyterlab(lab):
    pw, browser, page = _browser(lab)
    try:
        took = _run_notebook(page, lab["url"], "04_bar.ipynb")
        label = page.locator(".widget-label", has_text="T(0.25)").first
        label.wait_for()
        before = label.inner_text()
        handle = label.locator("xpath=ancestor::div[contains(@class,'widget-vbox')][1]").locator(".noUi-handle").first
        handle.scroll_into_view_if_needed()
        handle.focus()
        for _ in range(10):
            page.keyboard.press("ArrowLeft")
        page.wait_for_function("([el, old]) => el.innerText !== old", arg=[label.element_handle(), before],
                               timeout=60_000)
        after = label.inner_text()
        assert after != before and after.startswith("d = ")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(500)
        handle.scroll_into_view_if_needed()  # the slider, its figure below it
        page.screenshot(path=str(SHOTS / "04_bar_transition.png"), full_page=False)
        print(f"\n04_bar.ipynb ran in JupyterLab in {took:.0f} s; slider label {before!r} -> {after!r}")
    finally:
        browser.close()
        pw.stop()
