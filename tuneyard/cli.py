"""`tuneyard`: drive a running stack through its gateway, or start one locally."""

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

import httpx

from tuneyard import jobspec
from tuneyard.client import GatewayClient, GatewayError
from tuneyard.config import CommonSettings
from tuneyard.errors import TuneyardError
from tuneyard.eval_cli import add_eval_parser
from tuneyard.jobspec import JobSpec
from tuneyard.progress import follow_job
from tuneyard.projects_cli import add_projects_parser


def _print(obj) -> None:
    print(json.dumps(obj, indent=2))


def cmd_train(args, client: GatewayClient) -> int:
    spec = JobSpec.from_yaml(args.spec)
    if not args.server_paths:
        spec = with_uploads(spec, client)
    job = client.create_job(spec)
    print(f"created {job['id']} ({job['status']})", file=sys.stderr)
    if not args.follow:
        _print(job)
        return 0
    job = follow_job(client, job["id"])
    _print(job)
    return 0 if job["status"] == "succeeded" else 1


def with_uploads(spec: JobSpec, client: GatewayClient) -> JobSpec:
    """The spec with its data files that are on this machine uploaded and named by id: a
    stack elsewhere (compose, Kubernetes) reads only uploads and its own data folders."""
    changes = {}
    for path_field, id_field in (("path", "file_id"), ("eval_path", "eval_file_id")):
        path = Path(getattr(spec.data, path_field))
        if path.parts and path.is_file():
            uploaded = client.upload_file(path)
            print(f"uploaded {path} as {uploaded['id']}", file=sys.stderr)
            changes.update({path_field: "", id_field: uploaded["id"]})
    if not changes:
        return spec
    return spec.model_copy(update={"data": spec.data.model_copy(update=changes)})


def cmd_validate(args, client: GatewayClient) -> int:
    """Validate a spec's data on the trainer (no job): rows, token lengths, problems."""
    report = client.validate_job(JobSpec.from_yaml(args.spec))
    if args.json:
        _print(report)
        return 0 if report["ok"] else 1
    print(f"base model: {report['base_model']}")
    if not report["ok"]:
        error = report["error"]
        where = f" (line {error['line']})" if error.get("line") else ""
        print(f"INVALID [{error['code']}] {error['param'] or 'spec'}{where}: {error['message']}")
        return 1
    print(f"rows: {report['rows']} ({report['train_rows']} train, {report['eval_rows']} eval)")
    tokens = report["tokens"]
    print(
        "tokens per row: min {min}  mean {mean:.1f}  p50 {p50}  p95 {p95}  max {max}".format(
            **tokens
        )
    )
    if report["too_long"]:
        lines = ", ".join(map(str, report["too_long_lines"]))
        print(f"over max_seq_length: {report['too_long']} rows (lines {lines}...)")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    print("OK")
    return 0


def cmd_jobs(args, client: GatewayClient) -> int:
    for job in client.list_jobs(args.limit):
        print(f"{job['id']}  {job['status']:<16} {job.get('fine_tuned_model') or ''}")
    return 0


def cmd_job(args, client: GatewayClient) -> int:
    _print(follow_job(client, args.job_id) if args.follow else client.get_job(args.job_id))
    return 0


def cmd_cancel(args, client: GatewayClient) -> int:
    _print(client.cancel_job(args.job_id))
    return 0


def cmd_generate(args, client: GatewayClient) -> int:
    reply = client.generate(args.prompt, args.adapter, max_new_tokens=args.max_new_tokens)
    print(reply["generated_text"])
    return 0


def cmd_serve(args, _client) -> int:
    """Run the three services on the default ports until Ctrl-C."""
    from tuneyard.local_stack import LocalStack

    settings = CommonSettings()
    stack = LocalStack(
        home=settings.home,
        gateway_port=args.port,
        trainer_port=50051,
        inference_port=50052,
        trainer_metrics_port=9101,
        inference_metrics_port=9102,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with stack:
        print(
            f"tuneyard is up: gateway {stack.gateway_url} (logs in {settings.home}/logs); "
            "Ctrl-C stops it",
            file=sys.stderr,
        )
        stop.wait()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneyard", description=__doc__)
    parser.add_argument(
        "--url", default=os.environ.get("TUNEYARD_GATEWAY_URL", "http://127.0.0.1:8080")
    )
    parser.add_argument("--api-key", default=os.environ.get("TUNEYARD_API_KEY", ""))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="submit a job spec (YAML)",
        epilog="job spec fields:\n" + jobspec.reference(markdown=False),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", type=Path)
    p.add_argument("--follow", action="store_true", help="show progress until it ends")
    p.add_argument(
        "--server-paths",
        action="store_true",
        help="send data.path / data.eval_path as they are, for the trainer to read from its "
        "own data folders, instead of uploading the local files",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("validate", help="validate a job spec's data without creating a job")
    p.add_argument("spec", type=Path)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("jobs", help="list jobs, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("job", help="show one job")
    p.add_argument("job_id")
    p.add_argument("--follow", action="store_true")
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("cancel", help="cancel a job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("generate", help="generate text, with an adapter or the base model")
    p.add_argument("prompt")
    p.add_argument("--adapter", default=None, help="'name' or 'name@version'")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.set_defaults(func=cmd_generate)

    add_eval_parser(sub)
    add_projects_parser(sub)

    p = sub.add_parser("serve", help="run the three services locally until Ctrl-C")
    p.add_argument("--port", type=int, default=8080, help="gateway port")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = GatewayClient(args.url, args.api_key)
    try:
        return args.func(args, client)
    except (GatewayError, TuneyardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except httpx.TransportError as err:
        print(f"error: cannot reach the gateway at {args.url}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
