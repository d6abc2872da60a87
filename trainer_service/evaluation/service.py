"""The evaluation lifecycle: check and plan on create (bad input fails before any
generation), then one runner thread takes evaluations in order, runs them through the
inference service, writes the reports and stores the result.

    queued -> running -> succeeded | failed | cancelled
"""

import logging
import queue
import threading
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

from google.protobuf import json_format

from trainer_service.data_roots import DataRoots
from trainer_service.evaluation.inference import InferenceClient
from trainer_service.evaluation.plan import Plan, build_plan, fit_shots
from trainer_service.evaluation.report import write_reports
from trainer_service.evaluation.runner import EvaluationCancelled, Runner
from trainer_service.evaluation.settings import EvaluationSettings
from trainer_service.evaluation.store import Evaluation, EvaluationStore
from trainer_service.files import FileStore, files_dir
from trainer_service.job_store import Job
from trainer_service.journal import JobJournal
from trainer_service.results import store_result_files
from tuneyard.adapter_store import LOSS_CURVE, AdapterStore
from tuneyard.errors import InvalidArgument, TuneyardError
from tuneyard.eval_table import format_table
from tuneyard.modeling import load_tokenizer, resolve_base_model
from tuneyard.projects import DEFAULT_PROJECT, resolve_adapter
from tuneyard.statuses import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED
from tuneyard.v1 import evaluation_pb2

log = logging.getLogger(__name__)

REPORT_TYPES = {"html": "text/html; charset=utf-8", "md": "text/markdown; charset=utf-8"}


@lru_cache(maxsize=4)
def _tokenizer(base_model: str):
    return load_tokenizer(resolve_base_model(base_model))


class EvaluationService:
    def __init__(self, settings: EvaluationSettings, journal: JobJournal):
        self.settings = settings
        self.journal = journal  # an evaluation of a job's output reports into its events
        self.jobs = journal.store
        self.folder = settings.resolved_evaluations_dir
        self.store = EvaluationStore(self.folder / "evaluations.db")
        self.adapters = AdapterStore(settings.resolved_adapters_dir)
        self.files_root = files_dir(settings)
        self.files = FileStore(self.files_root)  # a job's reports are its result files
        self.data_roots = DataRoots.of(settings)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._plans: dict[str, Plan] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._thread = threading.Thread(target=self._loop, name="evaluations", daemon=True)

    def start(self) -> None:
        """Evaluations a stopped trainer left queued or running start over, in order."""
        for evaluation in self.store.with_status(QUEUED, RUNNING):
            self.store.set_status(evaluation.id, (QUEUED, RUNNING), QUEUED, done_requests=0)
            if evaluation.for_job:
                self.journal.follow(evaluation.for_job)
            self._enqueue(evaluation.id)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        for event in list(self._cancel.values()):
            event.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.store.close()

    # --- public --------------------------------------------------------------------------
    def create(
        self,
        spec: evaluation_pb2.EvaluationSpec,
        for_job: str = "",
        scope: str | None = None,
    ) -> Evaluation:
        """`scope`: the caller's project (None: every project); the spec's adapters, job and
        files must be that project's, and the evaluation is too."""
        self._check_scope(spec, scope)
        plan = self._plan(spec)
        evaluation = self.store.create(
            json_format.MessageToDict(spec, preserving_proto_field_name=True),
            adapter_id=plan.adapter.id,
            eval_source=plan.eval_source,
            rows=len(plan.cases),
            total_requests=2 * len(plan.arms) * len(plan.cases),
            for_job=for_job,
            project=scope or DEFAULT_PROJECT,
        )
        if for_job:
            self.journal.follow(for_job)  # until _finish links the result to the job
        self._plans[evaluation.id] = plan
        self._enqueue(evaluation.id)
        return evaluation

    def _check_scope(self, spec: evaluation_pb2.EvaluationSpec, scope: str | None) -> None:
        self.data_roots.check_evaluation(spec, scoped=scope is not None)
        if scope is None:
            return
        if spec.adapter_id:
            spec.adapter_id = resolve_adapter(scope, spec.adapter_id, "adapter_id")
        for i, adapter in enumerate(spec.compare_adapters):
            spec.compare_adapters[i] = resolve_adapter(scope, adapter, "compare_adapters")
        if spec.job_id:
            self.jobs.get_job(spec.job_id, scope)
        if spec.eval_file_id:
            self.files.get(spec.eval_file_id, scope)

    def get(self, evaluation_id: str, scope: str | None = None) -> Evaluation:
        return self.store.get(evaluation_id, scope)

    def list_evaluations(
        self, limit: int = 20, after: str = "", scope: str | None = None
    ) -> tuple[list[Evaluation], bool]:
        return self.store.list_evaluations(limit, after, scope)

    def cancel(self, evaluation_id: str, scope: str | None = None) -> Evaluation:
        """Queued: cancelled here; running (or starting: the runner took it meanwhile): its
        runner is told, and ends it as cancelled."""
        self.store.get(evaluation_id, scope)  # NotFound
        if not self._finish(evaluation_id, (QUEUED,), CANCELLED, "cancelled before it ran"):
            self._cancel.get(evaluation_id, threading.Event()).set()  # gone: it just ended
        return self.store.get(evaluation_id)

    def wait(self, evaluation_id: str, timeout: float) -> Evaluation:
        """Poll until the evaluation ends (or timeout); for callers in the same process."""
        deadline = time.monotonic() + timeout
        while not (evaluation := self.store.get(evaluation_id)).terminal:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return evaluation

    def report(self, evaluation_id: str, fmt: str, scope: str | None = None) -> tuple[str, bytes]:
        """(content type, bytes) of a finished evaluation's report: "html" or "md"."""
        evaluation = self.store.get(evaluation_id, scope)
        if fmt not in REPORT_TYPES:
            raise InvalidArgument(f"unknown report format {fmt!r}; use html or md", param="format")
        path = evaluation.report_html if fmt == "html" else evaluation.report_markdown
        if not path or not Path(path).is_file():
            raise InvalidArgument(
                f"evaluation {evaluation_id} has no report ({evaluation.status})",
                param="evaluation_id",
            )
        return REPORT_TYPES[fmt], Path(path).read_bytes()

    # --- running -------------------------------------------------------------------------
    def _client(self) -> InferenceClient:
        return InferenceClient(
            self.settings.inference_addr,
            self.settings.eval_request_timeout_s,
            self.settings.service_tokens,
        )

    def _plan(self, spec: evaluation_pb2.EvaluationSpec) -> Plan:
        """Everything checked that can be checked without generating."""
        plan = build_plan(
            spec,
            self.adapters,
            self.jobs,
            self.files_root,
            self.settings.resolved_trainer_workdir,
            _tokenizer,
        )
        client = self._client()
        try:
            info = client.info()
        finally:
            client.close()
        shots = fit_shots(
            plan, _tokenizer(plan.manifest.base_model), info.max_input_tokens, info.max_total_tokens
        )
        plan.shots = plan.shots[:shots]
        return plan

    def _enqueue(self, evaluation_id: str) -> None:
        self._cancel[evaluation_id] = threading.Event()
        self._queue.put(evaluation_id)

    def _loop(self) -> None:
        live = (QUEUED, RUNNING)
        while (evaluation_id := self._queue.get()) is not None:
            try:
                self._run(evaluation_id)
            except EvaluationCancelled:
                self._finish(evaluation_id, live, CANCELLED, "cancelled; no report written")
            except TuneyardError as err:
                self._finish(evaluation_id, live, FAILED, err.message)
            except Exception as err:  # a bug must not stop the loop for the next one
                log.exception("evaluation %s", evaluation_id)
                self._finish(evaluation_id, live, FAILED, f"internal error: {err!r}")

    def _run(self, evaluation_id: str) -> None:
        evaluation = self.store.get(evaluation_id)
        if evaluation.status != QUEUED:
            return  # cancelled while queued
        plan = self._plans.pop(evaluation_id, None)
        if plan is None:  # queued before a restart
            spec = json_format.ParseDict(evaluation.spec, evaluation_pb2.EvaluationSpec())
            plan = self._plan(spec)
        if not self.store.set_status(evaluation_id, (QUEUED,), RUNNING, started_at=time.time()):
            return  # cancelled while it was planned
        client = self._client()
        try:
            result = Runner(client, self.settings.eval_concurrency).run(
                plan,
                progress=lambda done: self.store.update(evaluation_id, done_requests=done),
                cancelled=self._cancel.setdefault(evaluation_id, threading.Event()),
            )
        finally:
            client.close()
        evaluation = self.store.update(evaluation_id, result=asdict(result))
        loss_curve = plan.adapter.path / LOSS_CURVE
        md, page = write_reports(
            self.folder / evaluation_id,
            evaluation,
            plan.manifest,
            loss_curve if loss_curve.is_file() else None,
            {**asdict(plan.sampling), **plan.report_settings},
        )
        self._finish(
            evaluation_id,
            (RUNNING,),
            SUCCEEDED,
            report_markdown=str(md),
            report_html=str(page),
        )

    def _finish(
        self, evaluation_id: str, expected: tuple[str, ...], status: str, error: str = "", **fields
    ) -> bool:
        """End it, from one of `expected`: False when another writer ended it first (then
        its job hears of it once, from that writer)."""
        evaluation = self.store.set_status(
            evaluation_id,
            expected,
            status,
            error=error if status == FAILED else "",
            finished_at=time.time(),
            **fields,
        )
        if evaluation is None:
            return False
        self._cancel.pop(evaluation_id, None)
        if evaluation.for_job:
            try:
                self._link_to_job(evaluation.for_job, evaluation)
            finally:
                self.journal.followed(evaluation.for_job)
        return True

    def evaluate_job(self, job: Job) -> Evaluation | None:
        """The scheduler's after-success action: evaluate a job's adapter when its spec asks
        for it (`evaluation`: EvaluationSpec fields; the job's eval split unless they name
        an eval file). When it ends, the table goes to the job's events and the reports to
        its result_files. A spec that cannot run becomes a warning event, not a failed
        job: the adapter is published either way."""
        if job.spec.evaluation is None:
            return None
        spec = json_format.ParseDict(dict(job.spec.evaluation), evaluation_pb2.EvaluationSpec())
        spec.job_id = job.id
        try:
            evaluation = self.create(spec, for_job=job.id, scope=job.project)
        except TuneyardError as err:
            self.journal.event(job.id, f"evaluation not started: {err.message}", level="warn")
            return None
        self.journal.event(job.id, f"evaluation {evaluation.id} started")
        return evaluation

    def _link_to_job(self, job_id: str, evaluation: Evaluation) -> None:
        if evaluation.status != SUCCEEDED:
            self.journal.event(
                job_id,
                f"evaluation {evaluation.id} {evaluation.status}: {evaluation.error}",
                level="warn",
            )
            return
        # The table first: whoever sees the reports linked can already read it.
        table = format_table(evaluation.result)
        self.journal.event(job_id, f"evaluation {evaluation.id}:\n{table}")
        reports = [evaluation.report_html, evaluation.report_markdown]
        project = self.journal.store.get_job(job_id).project
        self.journal.add_result_files(job_id, store_result_files(self.files, reports, project))
