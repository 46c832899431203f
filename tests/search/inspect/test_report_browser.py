"""The report as a person sees it: ``autosqueeze report`` opens it on a desktop, and Chromium draws its front plot.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package, as test_ui.py does, whose
browser fixture this module uses. Every wait is bounded.
"""
from __future__ import annotations

import io
import struct
import sys
import webbrowser
from pathlib import Path

import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from search.cli import main, on_a_desktop
from servers import WAIT_S
from test_plots import STUDY, built_study
from test_ui import browser  # noqa: F401  (the fixture: Debian Chromium, a fresh profile, always quit)

FRONT_IMG = "//figure[figcaption/a[@href='plots/front.html']]/img"
LOADED_JS = "return arguments[0].complete ? [arguments[0].naturalWidth, arguments[0].naturalHeight] : null;"
BOX_JS = """arguments[0].scrollIntoView({block: 'start'}); const r = arguments[0].getBoundingClientRect();
return [r.left, r.top, r.width, r.height, window.devicePixelRatio];"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, small_splits) -> Path:
    return built_study(tmp_path_factory, small_splits)


@pytest.fixture
def desktop(monkeypatch) -> list[str]:
    """A display; the URLs ``webbrowser.open`` was asked to show, instead of showing them."""
    opened: list[str] = []
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(webbrowser, "open", lambda url, *args, **kwargs: opened.append(url) or True)
    return opened


def png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])  # the IHDR chunk
    return width, height


def test_the_report_command_opens_the_report_and_chromium_draws_its_front_plot(run_dir, desktop, browser,
                                                                                 tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)  # the stdout the command prints to is a terminal
    assert main(["report", f"search.study_name={STUDY}", f"paths.run_dir={run_dir}"]) == 0
    report = run_dir / "report.html"
    assert capsys.readouterr().out.strip() == str(report)
    assert desktop == [report.resolve().as_uri()]

    browser.get(desktop[0])
    img = WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.XPATH, FRONT_IMG))
    natural = WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(LOADED_JS, img))
    assert tuple(natural) == png_size(run_dir / "plots" / "front.png")  # the embedded PNG decoded whole
    left, top, width, height, ratio = browser.execute_script(BOX_JS, img)
    assert width > 200 and height > 200
    screenshot = tmp_path / "report.png"
    assert browser.save_screenshot(str(screenshot))
    print(f"\nreport screenshot: {screenshot}")
    shot = Image.open(io.BytesIO(screenshot.read_bytes())).convert("RGB")
    box = (int(left * ratio), int(max(top, 0) * ratio), int(min(left + width, shot.width / ratio) * ratio),
           int(min(top + height, shot.height / ratio) * ratio))
    plot = shot.crop(box)
    assert plot.width > 200 and plot.height > 200, box  # the plot is in the screenshot, not scrolled away
    colours = plot.getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 50  # axes, text, markers: not one flat fill
    inked = sum(n for n, rgb in (colours or []) if sum(rgb) < 600) if colours else plot.width * plot.height
    assert inked > 0.005 * plot.width * plot.height  # dark pixels: lines, labels and points were drawn


@pytest.mark.parametrize("display, tty, platform, opens", [
    (":0", True, "linux", True), (None, True, "linux", False), (":0", False, "linux", False),
    (None, True, "darwin", True)])
def test_the_browser_opens_only_for_a_person_at_a_screen(monkeypatch, display, tty, platform, opens):
    for name in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    if display:
        monkeypatch.setenv("DISPLAY", display)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)
    monkeypatch.setattr(sys, "platform", platform)
    assert on_a_desktop() is opens
