"""The chat page in a real headless browser: Debian's `chromium` driven through its
`chromedriver` (package chromium-driver) by Selenium, since no browser can be downloaded here.
It types a message, sees a streamed reply with its tokens/s, and takes a screenshot."""

from __future__ import annotations

import re
import shutil

import pytest

SKIP = "needs a Chromium browser (Debian's chromium and chromium-driver; .ci/run installs them)"


def _binaries() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser():
    binaries = _binaries()
    if binaries is None:
        pytest.skip(SKIP)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = binaries[0]
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1000,700",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=binaries[1]), options=options)
    yield driver
    driver.quit()


def test_chat_page_streams_a_reply(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server.url}/")
    wait = WebDriverWait(browser, 30)
    # the page asked /v1/models for the model and its default depth
    wait.until(lambda b: b.find_element(By.ID, "model-name").text == server.state.name)
    assert browser.find_element(By.ID, "num-steps").get_attribute("value") == "4"
    depth = browser.find_element(By.ID, "num-steps")
    depth.clear()
    depth.send_keys("3")
    temperature = browser.find_element(By.ID, "temperature")
    temperature.clear()
    temperature.send_keys("0")
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("24")
    browser.find_element(By.ID, "message").send_keys("To be, or not to be?")
    browser.find_element(By.ID, "send").click()

    def replied(b):
        status = b.find_element(By.ID, "status").text
        return status.startswith(("done", "error")) and status

    status = wait.until(replied)
    assert status.startswith("done"), browser.find_element(By.CSS_SELECTOR, ".message").text
    messages = browser.find_elements(By.CSS_SELECTOR, ".message")
    assert [m.get_attribute("class").split()[1] for m in messages] == ["user", "assistant"]
    reply = messages[1].find_element(By.CSS_SELECTOR, ".content").text
    assert reply.strip()
    rate = browser.find_element(By.ID, "tokens-per-second").text
    assert re.fullmatch(r"\d+(\.\d+)? tokens/s", rate) and float(rate.split()[0]) > 0
    steps = browser.find_element(By.ID, "loop-steps").text
    assert steps == "3.00 loop steps/token"  # the depth chosen above reached the server
    screenshot = tmp_path / "chat.png"
    assert browser.save_screenshot(str(screenshot))
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000
