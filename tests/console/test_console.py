"""The console in a browser, against the whole stack: what a person sees and does."""

import json
import re

import httpx
from playwright.sync_api import expect

from tests.conftest import EMAIL_ROWS, EMAIL_TEMPLATE
from tests.support.services import start_gateway

from .conftest import ADMIN_KEY, PLAIN_KEY, PLAIN_ROLE, TIMEOUT_MS

STEPS = 8
# Records every change of the progress bar and of the chart's lines, with the job status
# shown at that moment: the test reads them afterwards, however fast the job went.
RECORD_CHANGES = """() => {
  window.changes = [];
  new MutationObserver(() => {
    const bar = document.querySelector('#progress');
    const line = document.querySelector('polyline[data-series="train loss"]');
    const status = document.querySelector('h1 [data-status]');
    window.changes.push({
      value: bar ? Number(bar.getAttribute('value')) : null,
      max: bar ? Number(bar.getAttribute('max')) : null,
      points: line ? Number(line.dataset.count) : 0,
      status: status ? status.dataset.status : null,
    });
  }).observe(document.body, {subtree: true, childList: true, attributes: true});
}"""


def test_asks_for_a_key_then_lists_jobs_from_the_gateway_alone(console, stack):
    page = console.open(key=None)
    expect(page.locator(".notice")).to_contain_text("needs an API key")
    console.shot("no-key")
    page.fill("#key", PLAIN_KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("h1")).to_have_text("Fine-tuning jobs")
    expect(page.locator("#role")).to_have_text(PLAIN_ROLE)
    # Kept for the session: a reload does not ask again.
    page.reload()
    expect(page.locator("h1")).to_have_text("Fine-tuning jobs")
    console.shot("jobs")
    foreign = [url for url in console.requests if not url.startswith(stack.url)]
    assert not foreign, f"the console fetched from elsewhere: {foreign}"


def test_without_keys_configured_everything_is_offered(console, stack):
    """A gateway with no keys over the same services: no key asked, admin actions shown."""
    settings = stack.app.state.settings
    open_gateway = start_gateway(
        inference_addr=settings.inference_addr, trainer_addr=settings.trainer_addr
    )
    try:
        console.url = open_gateway.url
        page = console.open("/adapters", key=None)
        expect(page.locator("#role")).to_have_text("open")
        expect(_adapter_row(page).locator(".load-adapter, .unload-adapter")).to_have_count(1)
        console.shot("adapters-no-keys")
    finally:
        open_gateway.stop()


def _spec(page) -> dict:
    return json.loads(page.input_value("#spec"))


def test_upload_validate_start_and_watch_a_job_to_its_evaluation(console, tmp_path):
    data = tmp_path / "emails.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in EMAIL_ROWS))
    page = console.open("/new")
    expect(page.locator("h1")).to_have_text("New fine-tuning job")
    page.set_input_files("#upload-file", data)
    expect(page.locator("#upload-status")).to_contain_text("Uploaded as file-")
    assert page.input_value("#training-file").startswith("file-")

    # The email example, made tiny; first with a template field the rows do not have.
    page.select_option("#example", label=page.locator("#example option").first.inner_text())
    spec = _spec(page)
    assert spec["recipe"] == "causal_lm" and "{{ product }}" in spec["template"]["prompt"]
    spec.update(
        adapter_name="console-emails",
        data={"eval_fraction": 0.25},
        lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        training={
            "max_steps": STEPS,
            "batch_size": 2,
            "max_seq_length": 128,
            "eval_steps": 4,
            "save_steps": 4,
        },
        evaluation={"max_new_tokens": 4, "checks": [{"type": "contains", "value": "Subject"}]},
    )
    wrong = {**spec, "template": {**spec["template"], "response": "{{ letter }}"}}
    page.fill("#spec", json.dumps(wrong, indent=2))
    page.click("#validate")
    report = page.locator("#validation .report")
    expect(report).to_have_attribute("data-ok", "false")
    expect(report).to_contain_text("line 1")
    expect(report).to_contain_text("letter")
    expect(page.locator("#start-job")).to_be_disabled()
    console.shot("new-job-refused")

    page.fill("#spec", json.dumps(spec, indent=2))
    page.click("#validate")
    expect(report).to_have_attribute("data-ok", "true")
    expect(report).to_contain_text(f"{len(EMAIL_ROWS)} rows (9 to train on, 3 to evaluate)")
    console.shot("new-job-validated")

    page.evaluate(RECORD_CHANGES)
    page.click("#start-job")
    expect(page.locator("h1 [data-status]")).to_have_text("succeeded", timeout=180_000)
    expect(page.locator("#progress")).to_have_attribute("value", str(STEPS))
    expect(page.locator("[data-figure=step]")).to_have_text(f"{STEPS} / {STEPS}")
    expect(page.locator('polyline[data-series="train loss"]')).to_have_attribute(
        "data-count", str(STEPS)
    )
    expect(page.locator('polyline[data-series="eval loss"]')).to_have_attribute(
        "data-last-x", str(STEPS)
    )
    expect(page.locator("#fine-tuned-model")).to_have_text("console-emails@1")
    changes = page.evaluate("window.changes")
    live = [c for c in changes if c["max"] == STEPS and 0 < c["value"] < STEPS]
    assert live, "the progress bar never showed a step between the first and the last"
    assert any(c["status"] == "running" for c in live), "no step was shown while running"
    points = [c["points"] for c in changes]
    assert points == sorted(points) and len(set(points)) > 2, "the chart did not grow step by step"
    assert page.locator("#events li").count() > 2
    # The results CSV, downloaded with the key (a plain link could not send it).
    results = page.locator("#result-files a")
    # The results CSV, then the loss curve (the evaluation's reports follow once it ends).
    expect(results.nth(1)).to_have_text("loss_curve.png")
    with page.expect_download() as download:
        results.first.click()
    assert download.value.suggested_filename.endswith("-results.csv")
    assert download.value.path().read_text().startswith("step,train_loss")
    console.shot("job")

    # A succeeded job's checkpoints are models of their own; one published from its row
    # becomes the adapter's next version.
    checkpoint = page.locator("#checkpoints tr[data-step='4']")
    expect(checkpoint).to_contain_text("-ckpt-step-4@1")
    checkpoint.get_by_role("button", name="Publish").click()
    expect(checkpoint.locator(".published")).to_have_text("console-emails@2")

    # The spec's evaluation runs after training; its table and report are a click away.
    evaluation = page.locator("a[href^='#/evaluations/']")
    expect(evaluation.locator("xpath=..").locator("[data-status]")).to_have_text(
        "succeeded", timeout=120_000
    )
    evaluation.click()
    expect(page.locator("#arms tr[data-arm=adapter]")).to_be_visible()
    expect(page.locator("#arms tr[data-arm=zero_shot]")).to_be_visible()
    expect(page.frame_locator("#report iframe").locator("body")).to_contain_text("zero_shot")
    console.shot("evaluation")

    console.go("/jobs")
    row = page.locator("#jobs tr[data-job^='ftjob-']").first
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text("causal_lm")
    expect(row).to_contain_text("console-emails@1")
    console.go("/evaluations")
    expect(page.locator("#evaluations tbody tr")).to_have_count(1)
    console.shot("evaluations")


def _token_logprobs(page, model: str) -> list[float]:
    """The log-probabilities of a pane's streamed tokens, each also shown on hover."""
    tokens = page.locator(f"[data-output='{model}'] .token")
    expect(tokens.first).to_have_attribute("title", re.compile(r"^logprob -?\d"))
    return tokens.evaluate_all("spans => spans.map(s => Number(s.dataset.logprob))")


def test_playground_streams_base_and_adapter_side_by_side(console):
    page = console.open("/playground", key=PLAIN_KEY)
    expect(page.locator("#picks input[data-model=emails]")).to_be_visible()
    for box in page.locator("#picks input").all():
        box.set_checked(box.get_attribute("data-model") in ("base", "emails"))
    # The adapter's own template fields, filled in.
    page.select_option("#mode", "fields")
    expect(page.locator("[data-field]")).to_have_count(2)
    page.fill("[data-field=product]", "Solar lantern")
    page.fill("[data-field=description]", "A lantern that charges in the sun.")
    page.fill("#max-new-tokens", "6")
    page.click("#generate")
    panes = page.locator("#outputs .pane")
    expect(panes).to_have_count(2)
    expect(page.locator("#outputs [data-done]")).to_have_count(2, timeout=60_000)
    base, tuned = _token_logprobs(page, "base"), _token_logprobs(page, "emails")
    assert 0 < len(base) <= 6 and 0 < len(tuned) <= 6
    assert base != tuned, "the adapter changes nothing: the panes show the same model"
    # Side by side: one row, two columns.
    first, second = (p.bounding_box() for p in panes.all())
    assert abs(first["y"] - second["y"]) < 1 and second["x"] > first["x"] + first["width"] / 2
    console.shot("playground")

    # Chat messages go through the OpenAI route, with its token log-probabilities.
    page.select_option("#mode", "chat")
    page.fill("[data-role=user]", "Write a short email about a lamp.")
    page.click("#generate")
    expect(page.locator("#outputs [data-done]")).to_have_count(2, timeout=60_000)
    assert _token_logprobs(page, "base") and _token_logprobs(page, "emails")


def _adapter_row(page):
    return page.locator("#adapters tr[data-adapter='emails@1']")


def test_adapters_load_and_unload_for_admins_only(console, stack):
    # A streamed request, so the serving figures have something to show.
    with httpx.stream(
        "POST",
        f"{stack.url}/generate_stream",
        json={"inputs": "Subject:", "parameters": {"adapter_id": "emails", "max_new_tokens": 4}},
        headers={"Authorization": f"Bearer {PLAIN_KEY}"},
        timeout=60,
    ) as answer:
        assert answer.status_code == 200 and answer.read()

    page = console.open("/adapters")
    row = _adapter_row(page)
    expect(row).to_contain_text("← emails")
    expect(row).to_contain_text("tiny-llama")
    cells = row.locator("td")
    requests = int(cells.nth(8).inner_text())
    assert requests >= 1 and cells.nth(9).inner_text() != "—"
    if row.get_attribute("data-state") != "loaded":
        row.locator(".load-adapter").click()
        expect(_adapter_row(page)).to_have_attribute("data-state", "loaded")
    expect(_adapter_row(page)).to_contain_text("q_proj, v_proj")
    console.shot("adapters")
    _adapter_row(page).locator(".unload-adapter").click()
    expect(_adapter_row(page)).to_have_attribute("data-state", "available")
    _adapter_row(page).locator(".load-adapter").click()
    expect(_adapter_row(page)).to_have_attribute("data-state", "loaded")

    # A plain key sees the adapters but no action, and the API refuses it anyway.
    page.click("#forget-key")
    page.fill("#key", PLAIN_KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#role")).to_have_text(PLAIN_ROLE)
    expect(_adapter_row(page)).to_be_visible()
    expect(page.locator(".load-adapter, .unload-adapter")).to_have_count(0)
    console.shot("adapters-plain-key")
    refused = httpx.post(
        f"{stack.url}/v1/adapters/emails/unload",
        headers={"Authorization": f"Bearer {PLAIN_KEY}"},
        timeout=30,
    )
    assert refused.status_code == 403
    admin = httpx.post(
        f"{stack.url}/v1/adapters/emails/unload",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert admin.status_code == 200 and admin.json()["loaded"] is False


def _long_job(stack, suffix: str) -> dict:
    """A job of the default project, made with the admin key, that runs until cancelled."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    data = "".join(json.dumps(r) + "\n" for r in EMAIL_ROWS).encode()
    upload = httpx.post(
        f"{stack.url}/v1/files",
        files={"file": ("emails.jsonl", data)},
        data={"purpose": "fine-tune"},
        headers=admin,
        timeout=30,
    ).json()
    return httpx.post(
        f"{stack.url}/v1/fine_tuning/jobs",
        json={
            "training_file": upload["id"],
            "suffix": suffix,
            "tuneyard": {"template": EMAIL_TEMPLATE, "training": {"max_steps": 10_000}},
        },
        headers=admin,
        timeout=30,
    ).json()


def test_admins_cancel_a_job_plain_keys_cannot(console, stack):
    job = _long_job(stack, "long-run")

    page = console.open(f"/jobs/{job['id']}", key=PLAIN_KEY)
    expect(page.locator("h1 [data-status]")).not_to_have_text("cancelled")
    expect(page.locator("#cancel-job")).to_have_count(0)
    page.click("#forget-key")
    page.fill("#key", ADMIN_KEY)
    page.click("#key-form button[type=submit]")
    page.click("#cancel-job")
    # The worker stops at its next step boundary: after loading the model, if it still is.
    expect(page.locator("h1 [data-status]")).to_have_text("cancelled", timeout=TIMEOUT_MS)
    expect(page.locator("#cancel-job")).to_have_count(0)
    console.shot("job-cancelled")


def test_a_project_key_sees_its_project_alone_and_an_admin_picks_one(console, stack):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    job = _long_job(stack, "default-project-job")
    project = httpx.post(
        f"{stack.url}/v1/organization/projects", json={"name": "console team"}, headers=admin
    ).json()
    key = httpx.post(
        f"{stack.url}/v1/organization/projects/{project['id']}/service_accounts",
        json={"name": "browser"},
        headers=admin,
    ).json()["api_key"]["value"]
    try:
        page = console.open("/jobs", key=key)
        expect(page.locator("#role")).to_have_text(f"key · {project['id']}")
        expect(page.locator("h1")).to_have_text("Fine-tuning jobs")
        expect(page.locator("main")).to_contain_text("No jobs yet")
        expect(page.locator(f'[data-job="{job["id"]}"]')).to_have_count(0)
        expect(page.locator("#project")).to_be_hidden()
        # A project key may start jobs: the form offers it.
        console.go("/new")
        expect(page.locator("main")).not_to_contain_text("needs a project key")
        console.shot("project-key")

        page.click("#forget-key")
        page.fill("#key", ADMIN_KEY)
        page.click("#key-form button[type=submit]")
        console.go("/jobs")
        expect(page.locator("#role")).to_have_text("admin key")
        expect(page.locator(f'[data-job="{job["id"]}"]')).to_have_count(1)
        expect(page.locator("#project option")).to_contain_text(["every project", "console team"])
        page.select_option("#project", project["id"])
        expect(page.locator("main")).to_contain_text("No jobs yet")
        console.shot("admin-picks-a-project")
        page.select_option("#project", "")
        expect(page.locator(f'[data-job="{job["id"]}"]')).to_have_count(1)
    finally:
        httpx.post(f"{stack.url}/v1/fine_tuning/jobs/{job['id']}/cancel", headers=admin)
