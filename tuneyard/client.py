"""A small HTTP client of the gateway, for the CLI and the demo."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tuneyard.jobspec import JobSpec
from tuneyard.statuses import TERMINAL


class GatewayError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class GatewayClient:
    def __init__(self, url: str, api_key: str = "", timeout_s: float = 120.0):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, **kwargs) -> dict | list:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise GatewayError(response.status_code, _error_text(response))
        return response.json()

    def organization(self, method: str, path: str, body: dict | None = None) -> dict:
        """The administration API under /v1/organization (admin keys only)."""
        return self._call(method, "/v1/organization" + path, json=body)

    # --- jobs -----------------------------------------------------------------------
    def create_job(self, spec: JobSpec) -> dict:
        return self._call("POST", "/v1/fine_tuning/jobs", json=_job_body(spec))

    def upload_file(self, path: Path, purpose: str = "fine-tune") -> dict:
        """POST /v1/files: the file object, whose id a job's data.file_id can name."""
        with open(path, "rb") as handle:
            return self._call(
                "POST", "/v1/files", files={"file": (path.name, handle)}, data={"purpose": purpose}
            )

    def validate_job(self, spec: JobSpec) -> dict:
        """The trainer's validation report for the spec; no job is created."""
        return self._call("POST", "/v1/fine_tuning/jobs/validate", json=_job_body(spec))

    def get_job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}")

    def list_jobs(self, limit: int = 20) -> list[dict]:
        return self._call("GET", "/v1/fine_tuning/jobs", params={"limit": limit})["data"]

    def cancel_job(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")

    def stream_events(self, job_id: str) -> Iterator[dict]:
        """Every event of the job, oldest first, until the job ends."""
        with self.http.stream(
            "GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"stream": "true"}, timeout=None
        ) as response:
            if response.status_code >= 400:
                response.read()
                raise GatewayError(response.status_code, _error_text(response))
            for line in response.iter_lines():
                if line.startswith("data:"):
                    payload = line[5:].strip()
                    if payload and payload != "[DONE]":
                        yield json.loads(payload)

    def model(self, model_id: str) -> dict:
        """An OpenAI model object: for an adapter's name, `root` is the version it means."""
        return self._call("GET", f"/v1/models/{model_id}")

    # --- generation -------------------------------------------------------------------
    def generate(self, inputs: str, adapter_id: str | None = None, **parameters) -> dict:
        parameters = {"adapter_id": adapter_id, **parameters}
        return self._call("POST", "/generate", json={"inputs": inputs, "parameters": parameters})

    # --- evaluations ------------------------------------------------------------------
    def create_evaluation(self, spec: dict) -> dict:
        """`spec`: EvaluationSpec fields (proto JSON names)."""
        return self._call("POST", "/v1/evaluations", json=spec)

    def get_evaluation(self, evaluation_id: str) -> dict:
        return self._call("GET", f"/v1/evaluations/{evaluation_id}")

    def list_evaluations(self, limit: int = 20) -> list[dict]:
        return self._call("GET", "/v1/evaluations", params={"limit": limit})["data"]

    def evaluation_report(self, evaluation_id: str, fmt: str = "html") -> bytes:
        response = self.http.get(f"/v1/evaluations/{evaluation_id}/report.{fmt}")
        if response.status_code >= 400:
            raise GatewayError(response.status_code, _error_text(response))
        return response.content

    def wait_evaluation(
        self, evaluation_id: str, poll_s: float = 1.0, on_poll=lambda evaluation: None
    ) -> dict:
        """Poll until the evaluation ends; `on_poll` sees each state (for progress)."""
        while True:
            evaluation = self.get_evaluation(evaluation_id)
            on_poll(evaluation)
            if evaluation["status"] in TERMINAL:
                return evaluation
            time.sleep(poll_s)


def _job_body(spec: JobSpec) -> dict:
    return {
        "model": spec.base_model or None,
        "training_file": spec.data.file_id or spec.data.path or None,
        "suffix": spec.adapter_name,
        "seed": spec.training.seed,
        "tuneyard": spec.model_dump(),
    }


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # OpenAI shape
        return error.get("message", str(error))
    return error or str(body)
