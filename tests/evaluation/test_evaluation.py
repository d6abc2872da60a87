"""Evaluations end to end through a real inference server: every arm, every check, the
loss boundary against a direct computation, reports equal to the result, jobs, restarts,
and bad input refused before any generation."""

import base64
import json
import math
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch

from tests.conftest import EMAIL_ROWS, EMAIL_TEMPLATE
from tests.evaluation.conftest import write_jsonl
from tests.support.engines import metric_total
from trainer_service.dataset import Split, file_sha256, read_rows, save_split
from trainer_service.evaluation.plan import build_plan, fit_shots
from trainer_service.project_store import ProjectStore
from trainer_service.scheduler import JobScheduler
from trainer_service.servicer import TrainerServicer, add_to_server
from tuneyard.adapter_store import LOSS_CURVE
from tuneyard.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from tuneyard.eval_table import number
from tuneyard.grpc_server import build_server
from tuneyard.jobspec import JobSpec
from tuneyard.local_stack import free_port
from tuneyard.modeling import load_tokenizer, resolve_base_model
from tuneyard.statuses import CANCELLED, QUEUED, SUCCEEDED
from tuneyard.v1 import evaluation_pb2 as pb
from tuneyard.v1 import trainer_pb2, trainer_pb2_grpc

FORMAT = r"Subject: [^\n]+\nHi there,\n[\s\S]+"
ALL_CHECKS = [
    pb.Check(type="exact_match"),
    pb.Check(type="contains", name="signed", value="The Team"),
    pb.Check(type="regex", name="format", pattern=FORMAT, fullmatch=True),
    pb.Check(type="json_schema", schema_json='{"type": "object"}'),
    pb.Check(type="rouge_l"),
]


def make_spec(heldout, train_rows, **fields) -> pb.EvaluationSpec:
    values = dict(
        adapter_id="email@1",
        eval_file=str(heldout),
        few_shot_file=str(train_rows),
        max_new_tokens=8,
        checks=ALL_CHECKS,
    )
    values.update(fields)
    return pb.EvaluationSpec(**values)


def inference_requests(inference) -> float:
    return metric_total(inference.metrics.registry, "tuneyard_inference_requests")


def direct_loss(base_path, adapter_path, cases) -> float:
    """Mean NLL per reference token computed with transformers (and PEFT) directly."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(resolve_base_model(str(base_path)))
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter_path is not None:
        model = PeftModel.from_pretrained(model, adapter_path)
    model.eval()
    total, count = 0.0, 0
    for prompt, reference in cases:
        n = len(tokenizer(prompt)["input_ids"])
        ids = torch.tensor([tokenizer(prompt + reference)["input_ids"]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        targets = ids[0, 1:]
        picked = logprobs[torch.arange(len(targets)), targets]
        total -= picked[n - 1 :].sum().item()
        count += len(targets) - (n - 1)
    return total / count


@pytest.fixture(scope="module")
def finished(tmp_path_factory, adapters, heldout, train_rows, inference, tiny_llama):
    """One full evaluation: three arms plus email@2, all check types (run once)."""
    from tests.evaluation.conftest import (
        EvaluationService,
        EvaluationSettings,
        JobJournal,
        JobStore,
    )

    home = tmp_path_factory.mktemp("home")
    (adapters[1][0].path / LOSS_CURVE).write_bytes(b"\x89PNG fake curve")
    settings = EvaluationSettings(
        home=home, adapters_dir=adapters[0], inference_addr=f"127.0.0.1:{inference.port}"
    )
    service = EvaluationService(settings, JobJournal(JobStore(settings.resolved_trainer_db)))
    service.start()
    created = service.create(make_spec(heldout, train_rows, compare_adapters=["email@2"]))
    evaluation = service.wait(created.id, timeout=120)
    yield service, evaluation
    service.close()


def test_every_arm_is_measured(finished, adapters):
    _, evaluation = finished
    assert evaluation.status == SUCCEEDED, evaluation.error
    arms = evaluation.result["arms"]
    assert [(a["name"], a["adapter_id"]) for a in arms] == [
        ("zero_shot", ""),
        ("few_shot", ""),
        ("adapter", "email@1"),
        ("email@2", "email@2"),
    ]
    assert [a["shots"] for a in arms] == [0, 3, 0, 0]
    assert evaluation.adapter_id == "email@1" and evaluation.rows == 3
    assert evaluation.done_requests == evaluation.total_requests == 2 * 4 * 3
    for arm in arms:
        assert arm["requests"] == 6
        assert arm["eval_loss"] > 0
        assert arm["perplexity"] == pytest.approx(math.exp(arm["eval_loss"]))
        assert set(arm["checks"]) == {"exact_match", "signed", "format", "json_schema", "rouge_l"}
        assert 0 < arm["mean_output_tokens"] <= 8
        assert arm["mean_latency_s"] > 0 and arm["tokens_per_second"] > 0
    by_name = {a["name"]: a for a in arms}
    # Same prompts and references: the same tokens scored, by different weights.
    assert by_name["zero_shot"]["loss_tokens"] == by_name["adapter"]["loss_tokens"]
    assert by_name["zero_shot"]["eval_loss"] != pytest.approx(by_name["adapter"]["eval_loss"])
    assert by_name["adapter"]["eval_loss"] != pytest.approx(by_name["email@2"]["eval_loss"])


def test_arm_scores_are_the_means_of_the_rows(finished):
    _, evaluation = finished
    examples = evaluation.result["examples"]
    assert [e["line"] for e in examples] == [1, 2, 3]
    assert examples[0]["reference"] == EMAIL_ROWS[0]["email"]
    for index, arm in enumerate(evaluation.result["arms"]):
        outputs = [e["outputs"][index] for e in examples]
        assert {o["arm"] for o in outputs} == {arm["name"]}
        for name, value in arm["checks"].items():
            assert value == pytest.approx(sum(o["checks"][name] for o in outputs) / 3)
        assert arm["mean_output_chars"] == pytest.approx(sum(len(o["text"]) for o in outputs) / 3)


def test_few_shot_prompts_carry_training_rows(finished, heldout, train_rows, adapters):
    service, _ = finished
    plan = build_plan(
        make_spec(heldout, train_rows),
        service.adapters,
        service.jobs,
        service.files_root,
        service.settings.resolved_trainer_workdir,
    )
    few_shot = plan.prompt(plan.arms[1], plan.cases[0], 3)
    assert few_shot.endswith(plan.cases[0].prompt)
    assert few_shot.count("### Product") == 4
    assert "Product 0\n" not in few_shot[: -len(plan.cases[0].prompt)]  # never the eval row
    assert plan.few_shot_stop == "### Product"


def test_eval_loss_equals_a_direct_computation(finished, tiny_llama, adapters):
    _, evaluation = finished
    cases = [(e["prompt"], e["reference"]) for e in evaluation.result["examples"]]
    arms = {a["name"]: a for a in evaluation.result["arms"]}
    assert arms["zero_shot"]["eval_loss"] == pytest.approx(
        direct_loss(tiny_llama, None, cases), rel=1e-4
    )
    assert arms["adapter"]["eval_loss"] == pytest.approx(
        direct_loss(tiny_llama, adapters[1][0].path, cases), rel=1e-4
    )


def test_reports_show_the_numbers_of_the_result(finished):
    _, evaluation = finished
    markdown = Path(evaluation.report_markdown).read_text()
    page = Path(evaluation.report_html).read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head[:5] == ["arm", "adapter", "shots", "eval loss", "perplexity"]
    for line, arm in zip(table[1:], evaluation.result["arms"], strict=True):
        cells = dict(zip(head, [c.strip() for c in line.strip("|").split("|")], strict=True))
        assert cells["arm"] == arm["name"]
        assert float(cells["eval loss"]) == pytest.approx(arm["eval_loss"], abs=5e-5)
        assert float(cells["perplexity"]) == pytest.approx(arm["perplexity"], abs=5e-5)
        for name, value in arm["checks"].items():
            assert float(cells[name]) == pytest.approx(value, abs=5e-5)
            assert f"<td class='num'>{number(value)}</td>" in page
        assert f"<td class='num'>{number(arm['eval_loss'])}</td>" in page
    # Side by side: every answer is in both reports; the loss curve is inlined.
    for example in evaluation.result["examples"]:
        for output in example["outputs"]:
            assert output["text"].strip()[:20].replace("<", "&lt;") in page
    assert base64.b64encode(b"\x89PNG fake curve").decode() in page
    assert "hyperparameters" in page and "eval split" not in page
    assert "sampling (resolved)" in markdown and '"max_new_tokens": 8' in markdown


def test_one_arm_and_a_limit(make_service, heldout, train_rows):
    service = make_service()
    service.start()
    spec = make_spec(
        heldout,
        train_rows,
        arms=["adapter"],
        limit=1,
        few_shot_file="",
        checks=[pb.Check(type="contains", value="x")],
    )
    evaluation = service.wait(service.create(spec).id, timeout=60)
    assert evaluation.status == SUCCEEDED, evaluation.error
    assert [a["name"] for a in evaluation.result["arms"]] == ["adapter"]
    assert evaluation.rows == 1 and len(evaluation.result["examples"]) == 1


def test_shots_are_fitted_to_the_context(make_service, heldout, train_rows, tiny_llama):
    service = make_service()
    plan = build_plan(
        make_spec(heldout, train_rows),
        service.adapters,
        service.jobs,
        service.files_root,
        service.settings.resolved_trainer_workdir,
    )
    tokenizer = load_tokenizer(resolve_base_model(str(tiny_llama)))

    def count(text):
        return len(tokenizer(text)["input_ids"])

    longest = max(plan.cases, key=lambda c: count(c.prompt))
    reference = max(count(c.reference) for c in plan.cases)
    one_shot = count(plan.prompt(plan.arms[1], longest, 1))
    assert fit_shots(plan, tokenizer, one_shot + reference, 10_000) == 1
    assert fit_shots(plan, tokenizer, 10_000, 10_000) == 3
    with pytest.raises(InvalidArgument, match="does not fit the served context"):
        fit_shots(plan, tokenizer, 5, 10_000)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"adapter_id": "nope"}, NotFound, "adapter 'nope' not found"),
        ({"compare_adapters": ["email@9"]}, NotFound, "has no version 9"),
        (
            {"checks": [pb.Check(type="regex", pattern="(")]},
            InvalidArgument,
            "pattern does not compile",
        ),
        ({"checks": [pb.Check(type="rouge")]}, InvalidArgument, "unknown check type"),
        ({"arms": ["two_shot"]}, InvalidArgument, "unknown arm 'two_shot'"),
        ({"few_shot_file": ""}, InvalidArgument, "give few_shot_file or a job_id"),
        ({"eval_file": ""}, InvalidArgument, "give eval_file"),
        ({"eval_file": "MISSING"}, InvalidArgument, "does not exist"),
        ({"eval_file": "/no/such.jsonl"}, InvalidArgument, "only from its data folders"),
        ({"few_shot_file": "/etc/passwd"}, InvalidArgument, "only from its data folders"),
        ({"adapter_id": ""}, InvalidArgument, "give adapter_id or job_id"),
        ({"job_id": "ftjob-missing"}, NotFound, "job 'ftjob-missing' not found"),
    ],
)
def test_bad_input_fails_before_any_generation(
    make_service, heldout, train_rows, inference, change, error, words
):
    if change.get("eval_file") == "MISSING":  # a file in a data folder that does not exist
        change = {"eval_file": str(heldout.parent / "missing.jsonl")}
    service = make_service()
    before = inference_requests(inference)
    with pytest.raises(error) as err:
        service.create(make_spec(heldout, train_rows, **change))
    assert words in err.value.message
    assert inference_requests(inference) == before
    assert service.list_evaluations() == ([], False)


def test_missing_columns_name_the_row(make_service, tmp_path, train_rows, inference):
    rows = [EMAIL_ROWS[0], {"product": "Lamp", "email": "Hi"}]
    service = make_service()
    before = inference_requests(inference)
    with pytest.raises(InvalidArgument) as err:
        service.create(make_spec(write_jsonl(tmp_path / "e.jsonl", rows), train_rows))
    assert err.value.line == 2
    assert "eval_file line 2" in err.value.message and "description" in err.value.message
    assert inference_requests(inference) == before


def test_inference_down_is_unavailable(make_service, heldout, train_rows):
    service = make_service(inference_addr=f"127.0.0.1:{free_port()}")
    with pytest.raises(Unavailable, match="inference service unavailable"):
        service.create(make_spec(heldout, train_rows))


def test_a_job_that_did_not_succeed_is_refused(
    make_service, heldout, train_rows, tiny_llama, email_jsonl
):
    service = make_service()
    job = service.jobs.create_job(job_spec(tiny_llama, email_jsonl))
    with pytest.raises(FailedPrecondition, match="only a succeeded job"):
        service.create(make_spec(heldout, train_rows, adapter_id="", job_id=job.id))


def job_spec(base, data, evaluation: dict | None = None) -> JobSpec:
    return JobSpec.parse(
        {
            "base_model": str(base),
            "adapter_name": "email",
            "data": {"path": str(data), "eval_fraction": 0.25},
            "template": EMAIL_TEMPLATE,
            "evaluation": evaluation,
        }
    )


def test_job_output_is_evaluated_on_its_eval_split_and_linked(
    make_service, tiny_llama, email_jsonl
):
    service = make_service()
    service.start()
    job = service.jobs.create_job(job_spec(tiny_llama, email_jsonl, {"max_new_tokens": 4}))
    job = service.jobs.update(
        job.id, status=SUCCEEDED, fine_tuned_model="email@1", result_files=["/x/loss_curve.png"]
    )
    evaluation = service.evaluate_job(job)
    evaluation = service.wait(evaluation.id, timeout=120)
    assert evaluation.status == SUCCEEDED, evaluation.error
    assert evaluation.rows == 3 and "eval split of " + job.id in evaluation.eval_source
    assert [a["shots"] for a in evaluation.result["arms"]] == [0, 3, 0]
    for _ in range(50):  # the link is written right after the status
        files = service.jobs.get_job(job.id).result_files
        if len(files) == 3:
            break
        time.sleep(0.1)
    assert files[0] == "/x/loss_curve.png"
    _assert_copies(service, files[1:], [evaluation.report_html, evaluation.report_markdown])
    messages = [e.message for e in service.jobs.events(job.id)]
    assert any(m.startswith(f"evaluation {evaluation.id}:\narm") for m in messages)


def test_a_bad_job_evaluation_is_a_warning(make_service, tiny_llama, email_jsonl):
    service = make_service()
    job = service.jobs.create_job(job_spec(tiny_llama, email_jsonl, {"checks": [{"type": "nope"}]}))
    job = service.jobs.update(job.id, status=SUCCEEDED, fine_tuned_model="email@1")
    assert service.evaluate_job(job) is None
    events = service.jobs.events(job.id)
    assert events[-1].level == "warn" and "unknown check type 'nope'" in events[-1].message


def test_a_job_is_evaluated_on_the_split_its_worker_recorded(
    make_service, heldout, train_rows, tiny_llama, email_jsonl
):
    """Rows 2 and 5 held out, as the worker wrote it down: those, whatever the seed says;
    and once the data file changed, the split is gone and the evaluation says so."""
    service = make_service()
    job = service.jobs.create_job(job_spec(tiny_llama, email_jsonl))
    job = service.jobs.update(job.id, status=SUCCEEDED, fine_tuned_model="email@1")
    rows = read_rows(email_jsonl, {}, "data.path")
    folder = service.settings.resolved_trainer_workdir / job.id
    folder.mkdir(parents=True)
    held_out = [rows[1], rows[4]]
    train = [r for r in rows if r not in held_out]
    save_split(folder, Split(train, held_out, str(email_jsonl)), file_sha256(email_jsonl))

    def plan():
        return build_plan(
            make_spec(heldout, train_rows, eval_file="", adapter_id="", job_id=job.id),
            service.adapters,
            service.jobs,
            service.files_root,
            service.settings.resolved_trainer_workdir,
        )

    evaluated = plan()
    assert [c.line for c in evaluated.cases] == [2, 5]
    email_jsonl.write_text(email_jsonl.read_text() + email_jsonl.read_text())
    with pytest.raises(FailedPrecondition, match="changed since job") as caught:
        plan()
    assert caught.value.param == "eval_file"


class Publishing:
    """An executor whose worker publishes email@1 once `go` is set."""

    def __init__(self):
        self.go = threading.Event()

    def start(self, job_id, workdir):
        go = self.go

        class Run:
            def events(self):
                go.wait(60)
                yield {"type": "result", "fine_tuned_model": "email@1", "result_files": []}

            def cancel(self):
                go.set()

            def wait(self):
                return 0

        return Run()


def test_a_watch_of_the_job_ends_with_its_evaluation_s_events(
    make_service, tiny_llama, email_jsonl
):
    """WatchJob over gRPC stays open after the job succeeded until the evaluation its spec
    asked for has reported: the table is the last event the watcher receives."""
    service = make_service()
    service.start()
    options = {"max_new_tokens": 2, "arms": ["adapter"]}
    job = service.jobs.create_job(job_spec(tiny_llama, email_jsonl, options), status=QUEUED)
    executor = Publishing()
    scheduler = JobScheduler(
        service.settings, service.journal, executor, after_success=[service.evaluate_job]
    )
    server = build_server()
    projects = ProjectStore(service.settings.resolved_projects_db, b"secret")
    add_to_server(TrainerServicer(scheduler, projects), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    scheduler.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel)
            watch = stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=120)
            first = next(watch)  # the watch is open before the job ends
            executor.go.set()
            messages = [first.message, *(e.message for e in watch)]
    finally:
        scheduler.close(timeout=5)
        server.stop(0)
    done = messages.index("succeeded: published email@1")
    started = [m for m in messages[done:] if m.startswith("evaluation ") and "started" in m]
    assert len(started) == 1
    evaluation_id = started[0].split()[1]
    assert messages[-1].startswith(f"evaluation {evaluation_id}:\narm")
    assert service.get(evaluation_id).status == SUCCEEDED


def test_queued_evaluations_survive_a_restart(make_service, heldout, train_rows):
    first = make_service()  # never started: its evaluations stay queued
    queued = first.create(make_spec(heldout, train_rows, arms=["adapter"], limit=1))
    cancelled = first.create(make_spec(heldout, train_rows, arms=["adapter"], limit=1))
    assert first.cancel(cancelled.id).status == "cancelled"
    first.close()
    second = make_service()
    second.start()
    assert second.wait(queued.id, timeout=60).status == SUCCEEDED
    assert second.get(cancelled.id).status == "cancelled"
    assert [e.id for e in second.list_evaluations()[0]] == [cancelled.id, queued.id]


def test_a_job_evaluation_left_queued_by_a_restart_still_reaches_the_job(
    make_service, tiny_llama, email_jsonl
):
    first = make_service()  # stopped before its evaluation ran
    options = {"max_new_tokens": 2, "arms": ["adapter"]}
    job = first.jobs.create_job(job_spec(tiny_llama, email_jsonl, options))
    job = first.jobs.update(job.id, status=SUCCEEDED, fine_tuned_model="email@1")
    evaluation = first.evaluate_job(job)
    first.close()
    second = make_service()
    second.start()
    assert second.wait(evaluation.id, timeout=60).status == SUCCEEDED
    for _ in range(50):  # the link is written right after the status
        if second.jobs.get_job(job.id).result_files:
            break
        time.sleep(0.1)
    done = second.get(evaluation.id)
    files = second.jobs.get_job(job.id).result_files
    _assert_copies(second, files, [done.report_html, done.report_markdown])


def _assert_copies(service, file_ids: list[str], reports: list[str]) -> None:
    """A job's result files are file ids (as OpenAI's), here copies of the reports."""
    assert len(file_ids) == len(reports) and all(f.startswith("file-") for f in file_ids)
    for file_id, report in zip(file_ids, reports, strict=True):
        info = service.files.get(file_id)
        assert info.purpose == "fine-tune-results" and info.filename == Path(report).name
        assert service.files.path(file_id).read_bytes() == Path(report).read_bytes()


def test_report_formats(finished):
    service, evaluation = finished
    content_type, content = service.report(evaluation.id, "md")
    assert content_type.startswith("text/markdown") and content.startswith(b"# Evaluation")
    with pytest.raises(InvalidArgument, match="unknown report format"):
        service.report(evaluation.id, "pdf")
    assert json.loads(json.dumps(evaluation.result))  # stored as plain JSON
    assert "reference starts after" in Path(evaluation.report_markdown).read_text()


def test_a_cancel_as_the_runner_takes_the_evaluation_ends_it_cancelled_once(
    make_service, tiny_llama, email_jsonl
):
    """The cancel lands after the runner read `queued` and before it wrote `running`: the
    runner's write finds it cancelled and runs nothing; the job hears of it once."""
    service = make_service()
    service.start()

    class CancelledOnPickUp(dict):
        def pop(self, key, *default):
            assert service.cancel(key).status == CANCELLED
            return super().pop(key, *default)

    service._plans = CancelledOnPickUp()
    job = service.jobs.create_job(job_spec(tiny_llama, email_jsonl, {"max_new_tokens": 4}))
    job = service.jobs.update(job.id, status=SUCCEEDED, fine_tuned_model="email@1")
    evaluation = service.evaluate_job(job)
    for _ in range(50):  # the runner has taken it
        if not service._plans:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    evaluation = service.get(evaluation.id)
    assert (evaluation.status, evaluation.error, evaluation.started_at) == (CANCELLED, "", 0)
    said = [e.message for e in service.jobs.events(job.id) if evaluation.id in e.message]
    name = f"evaluation {evaluation.id}"
    assert said == [f"{name} started", f"{name} cancelled: "]
    assert service.journal.settled(service.jobs.get_job(job.id))
