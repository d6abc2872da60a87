"""A small HTTP client of the gateway, for the CLI and the demo."""

import json
from collections.abc import Iterator

import httpx

from tuneyard.jobspec import JobSpec

TERMINAL = {"succeeded", "failed", "cancelled"}


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

    # --- jobs -----------------------------------------------------------------------
    def create_job(self, spec: JobSpec) -> dict:
        body = {
            "model": spec.base_model or None,
            "training_file": spec.data.path,
            "suffix": spec.adapter_name,
            "seed": spec.training.seed,
            "tuneyard": spec.model_dump(),
        }
        return self._call("POST", "/v1/fine_tuning/jobs", json=body)

    def get_job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}")

    def list_jobs(self, limit: int = 20) -> list[dict]:
        return self._call("GET", "/v1/fine_tuning/jobs", params={"limit": limit})["data"]

    def cancel_job(self, job_id: str) -> dict:
        return self._call("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")

    def stream_events(self, job_id: str) -> Iterator[dict]:
        """Every event of the job, oldest first, until the job ends."""
        with self.http.stream("GET", f"/v1/fine_tuning/jobs/{job_id}/events",
                              params={"stream": "true"}, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                raise GatewayError(response.status_code, _error_text(response))
            for line in response.iter_lines():
                if line.startswith("data:"):
                    payload = line[5:].strip()
                    if payload and payload != "[DONE]":
                        yield json.loads(payload)

    # --- generation -------------------------------------------------------------------
    def generate(self, inputs: str, adapter_id: str | None = None, **parameters) -> dict:
        parameters = {"adapter_id": adapter_id, **parameters}
        return self._call("POST", "/generate", json={"inputs": inputs, "parameters": parameters})


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # OpenAI shape
        return error.get("message", str(error))
    return error or str(body)
