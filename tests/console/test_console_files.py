"""The console's files as the gateway serves them (no backend, no browser)."""

import json
import re

import httpx
import pytest
import yaml

from gateway.console import STATIC_DIR
from tests.gateway.test_permissions import offline
from trainer_service.data_roots import EXAMPLES_DIR
from tuneyard.jobspec import JobSpec


def test_the_console_is_served_without_a_key_and_with_its_policy(make_gateway):
    gateway = offline(make_gateway, api_keys="user-key")
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        home = http.get("/")
        assert home.status_code == 307 and home.headers["location"] == "/console/"
        page = http.get("/console/")
        assert page.status_code == 200 and "<main" in page.text
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        # Every file the page names is there, served with the same policy.
        for name in re.findall(r'(?:src|href)="([\w.]+\.(?:js|css))"', page.text):
            answer = http.get(f"/console/{name}")
            assert answer.status_code == 200, name
            assert answer.headers["content-security-policy"] == policy
        # The API behind it still needs a key.
        assert http.get("/v1/models").status_code == 401
        # Counted in the request metrics under the console's path.
        metrics = http.get("/metrics").text
        assert (
            'tuneyard_gateway_requests_total{method="GET",route="/console",status="200"}' in metrics
        )
        # Not part of the API's description.
        assert not any(p.startswith("/console") for p in http.get("/openapi.json").json()["paths"])


def test_the_console_can_be_turned_off(make_gateway):
    gateway = offline(make_gateway, console=False)
    with httpx.Client(base_url=gateway.url, timeout=10) as http:
        assert http.get("/console/").status_code == 404
        assert http.get("/").status_code == 405  # only TGI's POST /


@pytest.mark.parametrize("path", sorted(STATIC_DIR.iterdir()), ids=lambda p: p.name)
def test_console_files_load_nothing_from_elsewhere(path):
    """Every script, style and font ships with the gateway: no URL to another host (the
    SVG namespace is a name, never fetched)."""
    text = path.read_text().replace("http://www.w3.org/2000/svg", "")
    assert not re.search(r"https?://|//[a-z0-9-]+\.[a-z]{2,}/", text, re.IGNORECASE), path.name


def test_the_new_job_page_starts_from_the_examples():
    """specs.json is examples/*.yaml less their data path (the page's file is the data)
    and their base model (the server's): kept in step with them, and each a valid spec."""
    starters = json.loads((STATIC_DIR / "specs.json").read_text())
    assert starters and len({s["title"] for s in starters}) == len(starters)
    for starter in starters:
        example = yaml.safe_load((EXAMPLES_DIR / starter["example"]).read_text())
        del example["base_model"], example["data"]["path"]
        example = {k: v for k, v in example.items() if v != {}}
        assert starter["spec"] == example, starter["example"]
        data = {**starter["spec"].get("data", {}), "file_id": "file-0"}
        JobSpec.parse({**starter["spec"], "data": data}, strict=True)
