"""The trainer's side of the parity gate, once a job published its version: the inference
service generates greedily for the prompts whose tokens the trained model wrote into the
manifest (trainer_service/worker/gate.py), from the same template fields, rendered by the
adapter's served template; the two are compared. The outcome and its numbers go into the
manifest and the job's events; a version that fails is published, but its name does not
move to it until it is promoted."""

import json
import logging

import grpc

from trainer_service.journal import JobJournal
from tuneyard.adapter_store import AdapterStore, GateProbe, ParityGate
from tuneyard.errors import TuneyardError, Unavailable
from tuneyard.grpc_server import call_error
from tuneyard.replicas import ReplicaAddresses
from tuneyard.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)
GENERATE_DEADLINE_S = 120.0


def compare(probe: GateProbe, tokens: int) -> tuple[float, float]:
    """(share of the first `tokens` positions holding the same token on both sides, the
    largest |log-probability difference| before the first disagreement)."""
    trained, served = probe.ids[:tokens], (probe.served_ids or [])[:tokens]
    positions = max(len(trained), len(served))
    same = sum(a == b for a, b in zip(trained, served, strict=False))
    agreed = next(
        (i for i, (a, b) in enumerate(zip(trained, served, strict=False)) if a != b),
        min(len(trained), len(served)),
    )
    diffs = [
        abs(a - b)
        for a, b in zip(
            probe.logprobs[:agreed], (probe.served_logprobs or [])[:agreed], strict=True
        )
    ]
    return (same / positions if positions else 1.0), max(diffs, default=0.0)


def judge(gate: ParityGate) -> ParityGate:
    """The gate with its numbers and its outcome, from probes the service answered."""
    results = [compare(probe, gate.tokens) for probe in gate.probes]
    agreement = min((a for a, _ in results), default=1.0)
    max_diff = max((d for _, d in results), default=0.0)
    identical = sum(a == 1.0 for a, _ in results)
    summary = (
        f"{identical} of {len(results)} held-out prompts identical over {gate.tokens} greedy "
        f"tokens (lowest agreement {agreement:.0%}, needed {gate.min_agreement:.0%}), largest "
        f"log-probability difference {max_diff:.3g}"
    )
    passed = agreement >= gate.min_agreement
    return gate.model_copy(
        update={
            "state": "passed" if passed else "failed",
            "agreement": agreement,
            "max_logprob_diff": max_diff,
            "reason": summary,
        }
    )


class ParityGateCheck:
    """Runs after a job published (the scheduler's `on_published`, after the preload)."""

    def __init__(self, store: AdapterStore, journal: JobJournal, inference_addr: str):
        self.store = store
        self.journal = journal
        self.inference_addr = inference_addr
        self.replicas = ReplicaAddresses(inference_addr) if inference_addr else None

    def __call__(self, job_id: str, model: str) -> None:
        version = self.store.resolve(model)
        manifest = version.manifest()
        gate = manifest.gate
        if gate is None or gate.state != "pending":
            return
        if self.replicas is None:
            gate = gate.model_copy(
                update={
                    "state": "skipped",
                    "reason": "no inference service to compare with (TUNEYARD_INFERENCE_ADDR)",
                }
            )
            self.store.update_manifest(version, manifest.model_copy(update={"gate": gate}))
            self.journal.event(job_id, f"parity gate skipped: {gate.reason}")
            return
        try:
            gate = judge(self._served(gate, version.id))
        except TuneyardError as err:
            gate = gate.model_copy(
                update={
                    "state": "failed",
                    "reason": f"the inference service did not serve it ({err.code}): {err.message}",
                }
            )
        self.store.update_manifest(version, manifest.model_copy(update={"gate": gate}))
        numbers = {
            k: v
            for k, v in (
                ("gate_agreement", gate.agreement),
                ("gate_max_logprob_diff", gate.max_logprob_diff),
            )
            if v is not None
        }
        if gate.state == "passed":
            self.journal.event(
                job_id,
                f"parity gate passed: {gate.reason}; {version.name} now means {version.id}",
                metrics=numbers,
            )
            return
        live = self._live_name(version.name)
        self.journal.event(
            job_id,
            f"parity gate failed: {gate.reason}. {version.id} is published, but "
            f"{version.name} {live}; POST /v1/adapters/{version.id}/promote serves it as "
            f"{version.name}",
            level="warn",
            metrics=numbers,
        )

    def _served(self, gate: ParityGate, adapter_id: str) -> ParityGate:
        addresses = self.replicas.refresh()
        if not addresses:
            raise Unavailable(f"{self.inference_addr} names no inference replica now")
        probes = []
        with grpc.insecure_channel(addresses[0]) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            for probe in gate.probes:
                request = inference_pb2.GenerateRequest(
                    fields=probe.fields,
                    messages=[inference_pb2.ChatMessage(**m) for m in probe.messages or []],
                    tools=json.dumps(probe.tools) if probe.tools else "",
                    adapter_id=adapter_id,
                    parameters=inference_pb2.GenerationParameters(
                        max_new_tokens=gate.tokens, details=True
                    ),
                )
                try:
                    reply = stub.Generate(request, timeout=GENERATE_DEADLINE_S)
                except grpc.RpcError as err:
                    raise call_error("inference", err) from err
                tokens = reply.details.tokens
                probes.append(
                    probe.model_copy(
                        update={
                            "served_ids": [t.id for t in tokens],
                            "served_logprobs": [t.logprob for t in tokens],
                        }
                    )
                )
        return gate.model_copy(update={"probes": probes})

    def _live_name(self, name: str) -> str:
        try:
            return f"still means {self.store.resolve(name).id}"
        except TuneyardError:
            return "means no version yet"
