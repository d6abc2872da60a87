"""The trainer's side of the parity gate, once a job published its version: the inference
service scores the tokens the trained model wrote into the manifest (trainer_service/
worker/gate.py) after the same prompts, from the same template fields, rendered by the
adapter's served template: teacher-forced, so one rounding difference cannot send the two
down different texts. The outcome and its numbers go into the manifest and the job's
events; a version that fails is published, but its name does not move to it until it is
promoted.

The comparison holds across dtypes. Both sides must tokenize each prompt alike; where the
trained model's choice was clear (its token ahead by more than `min_margin`), the service
must choose it too; and every token's log-probability must agree within a tolerance for
the coarser of the two dtypes. bf16 keeps 8 bits of mantissa, so a bf16 side rounds every
weight and activation by up to 0.4% and no bf16 kernel sums in the order of another: its
tolerance is wider (the measurements: README, "Same results on every machine")."""

import json
import logging
from dataclasses import dataclass

import grpc

from trainer_service.journal import JobJournal
from tuneyard.adapter_store import AdapterStore, GateProbe, ParityGate
from tuneyard.errors import TuneyardError, Unavailable
from tuneyard.grpc_server import call_error
from tuneyard.replicas import ReplicaAddresses
from tuneyard.service_auth import Tokens, client_channel
from tuneyard.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)
GENERATE_DEADLINE_S = 120.0
# Default tolerances (nats) on a token's log-probability: both sides in float32, and
# either in a 16-bit dtype. On the demo's adapter (README) the largest differences were
# 8e-6 and 0.152.
FLOAT32_TOLERANCE = 0.01
HALF_TOLERANCE = 0.3


def tolerance(gate: ParityGate) -> float:
    if gate.logprob_tolerance is not None:
        return gate.logprob_tolerance
    sides = {gate.trained_dtype or "float32", gate.served_dtype or "float32"}
    return FLOAT32_TOLERANCE if sides <= {"float32", "float64"} else HALF_TOLERANCE


@dataclass(frozen=True)
class ProbeComparison:
    prompt_differs_at: int | None
    """The first prompt token the two sides tokenized otherwise; None: alike."""
    clear: int
    """Positions where the trained model's token led by more than the gate's margin."""
    agreed: int
    """Of those, where the service's likeliest token was the trained model's."""
    max_diff: float

    @property
    def agreement(self) -> float:
        return self.agreed / self.clear if self.clear else 1.0


def compare(probe: GateProbe, gate: ParityGate) -> ProbeComparison:
    """One probe's comparison over its first `gate.tokens` tokens."""
    trained, served = probe.prompt_ids, probe.served_prompt_ids or []
    differs = next(
        (i for i, (a, b) in enumerate(zip(trained, served, strict=False)) if a != b), None
    )
    if differs is None and trained and len(trained) != len(served):
        differs = min(len(trained), len(served))
    n = min(gate.tokens, len(probe.ids))
    margins = probe.margins or [float("inf")] * n  # a probe from before margins: all clear
    clear = [i for i in range(n) if margins[i] > gate.min_margin]
    top = probe.served_ids or []
    agreed = sum(i < len(top) and top[i] == probe.ids[i] for i in clear)
    scored = probe.served_logprobs or []
    diffs = [
        abs(probe.logprobs[i] - scored[i]) if i < len(scored) else float("inf") for i in range(n)
    ]
    return ProbeComparison(differs, len(clear), agreed, max(diffs, default=0.0))


def judge(gate: ParityGate) -> ParityGate:
    """The gate with its numbers and its outcome, from probes the service scored."""
    results = [compare(probe, gate) for probe in gate.probes]
    agreement = min((r.agreement for r in results), default=1.0)
    max_diff = max((r.max_diff for r in results), default=0.0)
    allowed = tolerance(gate)
    clear = sum(r.clear for r in results)
    dtypes = f"{gate.trained_dtype or 'unknown'} trained, {gate.served_dtype or 'unknown'} served"
    summary = (
        f"{len(results)} held-out prompts, {gate.tokens} greedy tokens each, scored "
        f"teacher-forced ({dtypes}): the service's likeliest token is the trained model's "
        f"on {agreement:.0%} of the {clear} positions with a margin over {gate.min_margin:g} "
        f"nats (lowest prompt; needed {gate.min_agreement:.0%}), largest log-probability "
        f"difference {max_diff:.3g} (allowed {allowed:.3g})"
    )
    passed = agreement >= gate.min_agreement and max_diff <= allowed
    if mismatched := [(i, r) for i, r in enumerate(results) if r.prompt_differs_at is not None]:
        i, r = mismatched[0]
        passed = False
        summary = (
            f"the service tokenizes {len(mismatched)} of {len(results)} held-out prompts "
            f"otherwise than the trained model read them (prompt {i + 1} from token "
            f"{r.prompt_differs_at}): it renders another template or uses another tokenizer; "
            + summary
        )
    return gate.model_copy(
        update={
            "state": "passed" if passed else "failed",
            "agreement": agreement,
            "max_logprob_diff": max_diff,
            "logprob_tolerance": allowed,
            "reason": summary,
        }
    )


def scored(probe: GateProbe, ids: list[int], top_ids: list[int], logprobs: list[float]):
    """The probe with what the service made of its prompt + tokens (each prefill position's
    id, likeliest id and log-probability): its prompt ids and its scores of the tokens."""
    n = len(ids) - len(probe.ids)
    return probe.model_copy(
        update={
            "served_prompt_ids": ids[:n],
            "served_ids": top_ids[n:],
            "served_logprobs": logprobs[n:],
        }
    )


class ParityGateCheck:
    """Runs after a job published (the scheduler's `on_published`, after the preload)."""

    def __init__(
        self, store: AdapterStore, journal: JobJournal, inference_addr: str, tokens: Tokens = ()
    ):
        self.store = store
        self.journal = journal
        self.inference_addr = inference_addr
        self.tokens = tokens  # the service token its calls carry (tuneyard.service_auth)
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
        if manifest.trained_on is not None:
            gate = gate.model_copy(update={"trained_dtype": manifest.trained_on.dtype})
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
        with client_channel(addresses[0], self.tokens) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            try:
                info = stub.Info(inference_pb2.InfoRequest(), timeout=GENERATE_DEADLINE_S)
                for probe in gate.probes:
                    probes.append(self._scored(stub, probe, adapter_id))
            except grpc.RpcError as err:
                raise call_error("inference", err) from err
        return gate.model_copy(update={"probes": probes, "served_dtype": info.model_dtype})

    @staticmethod
    def _scored(stub, probe: GateProbe, adapter_id: str) -> GateProbe:
        """The probe with the service's prompt ids and, at each of the trained model's
        tokens, its likeliest token and its log-probability of the trained model's."""
        request = inference_pb2.GenerateRequest(
            fields=probe.fields,
            messages=[inference_pb2.ChatMessage(**m) for m in probe.messages or []],
            tools=json.dumps(probe.tools) if probe.tools else "",
            adapter_id=adapter_id,
            continuation_ids=probe.ids,
            parameters=inference_pb2.GenerationParameters(
                max_new_tokens=1, decoder_input_details=True, top_n_tokens=1
            ),
        )
        prefill = stub.Generate(request, timeout=GENERATE_DEADLINE_S).details.prefill
        return scored(
            probe,
            [t.id for t in prefill],
            [t.top_tokens[0].id if t.top_tokens else t.id for t in prefill],
            [t.logprob for t in prefill],
        )

    def _live_name(self, name: str) -> str:
        try:
            return f"still means {self.store.resolve(name).id}"
        except TuneyardError:
            return "means no version yet"
