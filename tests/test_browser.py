"""The web page in headless Chromium, over a real uvicorn server on 127.0.0.1: search, neighbours, playback."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason=f"needs Chromium ({CHROMIUM}) and chromedriver ({CHROMEDRIVER}): "
                                       "apt-get install chromium chromium-driver")


class ServerThread:
    """uvicorn serving ``app`` on a free 127.0.0.1 port in a thread; ``stop`` shuts it down."""

    def __init__(self, app):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def headless_chromium(*, profile_dir: str, width: int = 1400, height: int = 900):
    """A selenium driver for headless Chromium with a fresh profile and no background network use."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={profile_dir}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def wait_for(condition, *, timeout: float = 20.0, what: str = "condition"):
    """``condition()``'s first true value; an element the page re-rendered meanwhile (stale) counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:  # the list was drawn again between finding and using a row
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def served(mfcc_catalog):
    from musicsim.serve import create_app

    server = ServerThread(create_app(index_dir=mfcc_catalog["index_dir"]))
    server.paths = mfcc_catalog["paths"]
    yield server
    server.stop()


def test_search_select_neighbours_and_play_in_chromium(served, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver = headless_chromium(profile_dir=str(tmp_path / "profile"))

    def rows(css: str) -> list:
        return driver.find_elements(By.CSS_SELECTOR, css)

    def audio(script: str):
        """Evaluates ``script`` with ``a`` the page's <audio> element."""
        return driver.execute_script(f"const a = document.getElementById('player'); return {script};")

    try:
        driver.get(served.url)
        wait_for(lambda: len(rows("#track-list li[role=option]")) == 16, what="the catalog")
        assert "16 tracks" in driver.find_element(By.ID, "index-summary").text

        search = driver.find_element(By.ID, "search-input")
        search.send_keys("noisy", Keys.ENTER)
        wait_for(lambda: len(rows("#track-list li[role=option]")) == 4, what="the search results")
        wait_for(lambda: {row.get_attribute("data-id").split("/")[0] for row in rows("#track-list li[role=option]")}
                 == {"noisy_mid"}, what="only the noisy_mid album in the results")

        wait_for(lambda: rows("#track-list li[role=option]")[1].click() or True, what="a click on the second result")
        wait_for(lambda: len(rows("#neighbour-list li[role=option]")) == 10, what="the neighbours")
        assert driver.find_element(By.ID, "now-title").text == "t1"
        neighbour_ids = wait_for(lambda: [row.get_attribute("data-id") for row in rows("#neighbour-list li[role=option]")],
                                 what="the neighbours' ids")
        assert neighbour_ids[0].startswith("noisy_mid/")  # same timbre first
        assert "noisy_mid/t1" not in neighbour_ids

        driver.find_element(By.ID, "play-selected").click()
        wait_for(lambda: audio("!a.paused && a.readyState >= 2 && a.currentTime > 0.1"), what="playback")
        assert audio("a.src").endswith("/api/audio/noisy_mid%2Ft1") and audio("a.error") is None

        # Keyboard: down arrow then Enter in the neighbour list queries that neighbour.
        first = neighbour_ids[0]
        neighbour_list = driver.find_element(By.ID, "neighbour-list")
        neighbour_list.send_keys(Keys.ARROW_DOWN, Keys.ENTER)
        wait_for(lambda: driver.find_element(By.ID, "neighbours-title").text.endswith(f"“{first.split('/')[1]}”"),
                 what="the keyboard query")

        driver.find_element(By.ID, "radio-selected").click()
        wait_for(lambda: len(rows("#playlist li[role=option]")) == 15, what="the radio playlist")
        # Played through: when a track ends, the next one of the playlist starts.
        queue = [row.get_attribute("data-id") for row in rows("#playlist li[role=option]")]
        driver.find_element(By.ID, "play-all").click()
        wait_for(lambda: audio("!a.paused && a.readyState >= 2 && isFinite(a.duration)"),
                 what="the playlist's first track")
        assert audio("decodeURIComponent(a.src)").endswith(queue[0])
        driver.execute_script("const a = document.getElementById('player'); a.currentTime = a.duration - 0.2;")
        wait_for(lambda: audio("decodeURIComponent(a.src)").endswith(queue[1]) and audio("!a.paused"),
                 what="the next track after the first ended")

        # A chosen file is uploaded and its neighbours listed; its own track comes first.
        driver.find_element(By.ID, "file-input").send_keys(str(served.paths[5]))
        wait_for(lambda: "the file “t1.wav”" in driver.find_element(By.ID, "neighbours-title").text,
                 what="the file query")
        assert rows("#neighbour-list li[role=option]")[0].get_attribute("data-id") == "bright_square/t1"
        wait_for(lambda: "PCA of 16 tracks" in driver.find_element(By.ID, "map-method").text, what="the map")
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert os.path.getsize(tmp_path / "page.png") > 10_000
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
