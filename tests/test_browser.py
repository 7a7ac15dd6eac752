"""The web page in headless Chromium, over a real uvicorn server on 127.0.0.1: search, neighbours, playback,
tags and cover art, saving a playlist as M3U.

``MUSICSIM_SCREENSHOT=docs/screenshot.png`` makes the tagged library's test save its screenshot there too
(the README's picture of the page).
"""
from __future__ import annotations

import glob
import os
import shutil
import time

import pytest

from conftest import ServerThread
from test_serve import parse_m3u8, write_tagged_library

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason=f"needs Chromium ({CHROMIUM}) and chromedriver ({CHROMEDRIVER}): "
                                       "apt-get install chromium chromium-driver")


def headless_chromium(*, profile_dir: str, width: int = 1400, height: int = 900, download_dir: str | None = None):
    """A selenium driver for headless Chromium with a fresh profile and no background network use;
    downloads go to ``download_dir`` without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    if download_dir:
        options.add_experimental_option("prefs", {"download.default_directory": download_dir,
                                                  "download.prompt_for_download": False,
                                                  "safebrowsing.enabled": False})
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={profile_dir}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    if download_dir:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": download_dir})
    return driver


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
    from musicsim.search.app import create_app

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


@pytest.fixture(scope="module")
def served_library(mfcc_catalog, tmp_path_factory):
    """The tagged FLAC library (test_serve.write_tagged_library) indexed and served, M3U paths relative to it."""
    from musicsim.index import FaissIndex
    from musicsim.search.app import create_app

    library = write_tagged_library(mfcc_catalog, tmp_path_factory.mktemp("browser-library"))
    index_dir = str(library["root"] / "index")
    FaissIndex(track_ids=library["ids"], vectors=library["vectors"], similarity="euclidean",
                   metadata=library["metadata"], model=library["model"]).save(index_dir)
    server = ServerThread(create_app(index_dir=index_dir, m3u_root=str(library["library"])))
    server.library = library
    yield server
    server.stop()


def test_tags_cover_art_and_saving_a_playlist_in_chromium(served_library, tmp_path):
    from selenium.webdriver.common.by import By

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = headless_chromium(profile_dir=str(tmp_path / "profile"), width=1440, height=900,
                               download_dir=str(downloads))
    metadata = served_library.library["metadata"]
    relative_of = dict(zip(served_library.library["ids"], metadata["relative_path"]))

    def rows(css: str) -> list:
        return driver.find_elements(By.CSS_SELECTOR, css)

    def row_named(title: str):
        return next(row for row in rows("#track-list li[role=option]")
                    if row.find_element(By.CSS_SELECTOR, ".title").text.startswith(title + " — ")
                    or row.find_element(By.CSS_SELECTOR, ".title").text == title)

    def image_loaded(css: str) -> bool:
        return driver.execute_script(f"const i = document.querySelector('{css}'); "
                                     "return !!i && !i.hidden && i.complete && i.naturalWidth === 24;")

    try:
        driver.get(served_library.url)
        wait_for(lambda: len(rows("#track-list li[role=option]")) == 16, what="the catalog")
        # Rows read "title — artist · album"; a track without tags shows its file name and folder.
        names = wait_for(lambda: [row.find_element(By.CSS_SELECTOR, ".title").text
                                  for row in rows("#track-list li[role=option]")], what="the rows' names")
        assert "Sång för en ton — Åsa Öberg · Låga toner" in names
        assert "Harmonics, Odd — The Squares · Square Waves" in names and "Static — Lee · Noise, Mostly" in names
        assert "track0 — untagged" in names
        # Covers: a thumbnail on the rows of files that embed one, none on the others.
        wait_for(lambda: driver.execute_script(
            "return [...document.querySelectorAll('#track-list img.thumb')].filter(i => i.complete && "
            "i.naturalWidth === 24).length") == 8, what="the 8 cover thumbnails")

        wait_for(lambda: row_named("Edges").click() or True, what="a click on Edges")
        wait_for(lambda: driver.find_element(By.ID, "now-title").text == "Edges", what="the selected track")
        assert driver.find_element(By.ID, "now-byline").text == "The Squares · Square Waves (2004)"
        assert "The Squares/Square Waves/CD1/01 Edges.flac" in driver.find_element(By.ID, "now-sub").text
        wait_for(lambda: image_loaded("#now-art"), what="the cover art of the selected track")
        # Other albums only: the album's other disc folder is left out too.
        wait_for(lambda: len(rows("#neighbour-list li[role=option]")) == 10, what="the neighbours")
        driver.find_element(By.ID, "exclude-group").click()
        wait_for(lambda: (lambda texts: len(texts) == 10 and not any("Square Waves" in t for t in texts))(
            [row.text for row in rows("#neighbour-list li[role=option]")]), what="neighbours from other albums")
        driver.find_element(By.ID, "exclude-group").click()

        wait_for(lambda: row_named("track0").click() or True, what="a click on an untagged track")
        wait_for(lambda: driver.find_element(By.ID, "now-title").text == "track0", what="the untagged track")
        assert not driver.find_element(By.ID, "now-art").is_displayed()

        # A radio, saved as an M3U file: the same tracks, in order, relative to --m3u_root.
        wait_for(lambda: row_named("Sång för en ton").click() or True, what="a click on Sång för en ton")
        wait_for(lambda: driver.find_element(By.ID, "now-title").text == "Sång för en ton", what="the seed")
        wait_for(lambda: image_loaded("#now-art"), what="the seed's cover art")
        assert driver.find_element(By.ID, "save-playlist").get_attribute("disabled")
        driver.find_element(By.ID, "radio-selected").click()
        wait_for(lambda: len(rows("#playlist li[role=option]")) == 15, what="the radio playlist")
        queue = wait_for(lambda: [row.get_attribute("data-id") for row in rows("#playlist li[role=option]")],
                         what="the playlist's ids")
        driver.find_element(By.ID, "save-playlist").click()
        saved = wait_for(lambda: [p for p in glob.glob(str(downloads / "*.m3u8"))], what="the downloaded M3U")
        assert os.path.basename(saved[0]) == "radio from Sång för en ton.m3u8"
        entries = parse_m3u8(open(saved[0], encoding="utf-8").read())
        assert [entry["path"] for entry in entries] == [relative_of[track_id] for track_id in queue]
        assert entries[0]["label"] == "Åsa Öberg - Sång för en ton" and entries[0]["seconds"] == 2

        wait_for(lambda: "PCA of 16 tracks" in driver.find_element(By.ID, "map-method").text, what="the map")
        driver.execute_script("document.activeElement.blur()")  # no focus ring or hover in the picture
        wait_for(lambda: not driver.find_element(By.ID, "status").is_displayed()
                 or driver.execute_script("return getComputedStyle(document.getElementById('status')).opacity") == "0",
                 what="the status message to fade")
        driver.save_screenshot(str(tmp_path / "page.png"))
        assert os.path.getsize(tmp_path / "page.png") > 10_000
        if os.environ.get("MUSICSIM_SCREENSHOT"):
            shutil.copyfile(tmp_path / "page.png", os.environ["MUSICSIM_SCREENSHOT"])
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()
