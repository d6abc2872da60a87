"""The console in a real browser (Debian's chromium, driven by Playwright) against a real
stack on tiny models: the inference service and the trainer in-process, the gateway with
a plain and an admin key, an `emails` adapter already published."""

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.support.adapters import make_adapter
from tests.support.services import serve_inference, start_gateway
from trainer_service.server import serve as serve_trainer
from trainer_service.settings import TrainerSettings

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (the tests may run as root), no GPU, and nothing the browser would fetch by
# itself: the console must work with the gateway as its only server.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PLAIN_KEY = "plain-key"
ADMIN_KEY = "admin-key"
# What the header says of the plain key: the default project's, to read and generate.
PLAIN_ROLE = "key · proj_default (read only)"
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def stack(tiny_llama, tmp_path_factory):
    home = tmp_path_factory.mktemp("console-home")
    adapters = home / "adapters"
    make_adapter(tiny_llama, adapters, "emails")
    inference = serve_inference(tiny_llama, adapters)
    trainer = serve_trainer(
        TrainerSettings(
            home=home,
            adapters_dir=adapters,
            base_model=str(tiny_llama),
            inference_addr=f"127.0.0.1:{inference.port}",
            trainer_port=0,
            trainer_metrics_port=0,
            trainer_device="cpu",
        )
    )
    gateway = start_gateway(
        inference_addr=f"127.0.0.1:{inference.port}",
        trainer_addr=f"127.0.0.1:{trainer.port}",
        api_keys=[PLAIN_KEY],
        admin_keys=[ADMIN_KEY],
    )
    yield gateway
    gateway.stop()
    trainer.stop(grace=1)
    inference.stop(grace=0)


@pytest.fixture(scope="module")
def browser():
    """Module-scoped: Playwright's sync API runs an event loop in this thread while it is
    started, and later tests that call asyncio.run() must not find it running."""
    # The browser must be there: `make test` installs it (the Makefile's `browser`).
    assert CHROMIUM.is_file(), f"no browser at {CHROMIUM}: `make browser` installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Console:
    """A browser tab on the console; every request it makes is kept in `requests`, and
    each page it shows is saved as a screenshot in `shots` (to look at after a failure)."""

    def __init__(self, page: Page, url: str, shots: Path):
        self.page, self.url, self.shots = page, url, shots
        self.requests: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.set_default_timeout(TIMEOUT_MS)

    def open(self, hash_path: str = "", key: str | None = ADMIN_KEY) -> Page:
        self.page.goto(f"{self.url}/console/#{hash_path}")
        if key is not None:
            self.page.fill("#key", key)
            self.page.click("#key-form button[type=submit]")
            expect(self.page.locator("#role")).to_have_text(
                "admin key"
                if key == ADMIN_KEY
                else PLAIN_ROLE
                if key == PLAIN_KEY
                else re.compile("key")
            )
        return self.page

    def go(self, hash_path: str) -> Page:
        self.page.evaluate("hash => { location.hash = hash; }", hash_path)
        return self.page

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=path, full_page=True)
        return path


@pytest.fixture
def console(browser, stack, tmp_path):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield Console(page, stack.url, tmp_path)
    context.close()
    assert not errors, f"script errors in the console: {errors}"
