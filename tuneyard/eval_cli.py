"""`tuneyard eval`: compare an adapter with prompting its base model (zero-shot, few-shot)
on held-out rows, through the gateway; prints the per-arm table and the report's path."""

import argparse
import sys
from pathlib import Path

import yaml

from tuneyard.client import GatewayClient
from tuneyard.errors import InvalidArgument
from tuneyard.eval_table import format_table

ARMS = ("zero_shot", "few_shot", "adapter")


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="evaluate an adapter against the base model zero-shot and few-shot"
    )
    p.add_argument("adapter", nargs="?", default="", help="'name' or 'name@version'")
    p.add_argument("--job", default="", help="a succeeded job: its adapter and eval split")
    p.add_argument("--eval-file", type=Path, help="held-out rows (JSONL, CSV, Parquet)")
    p.add_argument("--eval-file-id", default="", help="an uploaded file's id instead")
    p.add_argument(
        "--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS)
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="ADAPTER",
        help="another adapter or version as an extra arm (repeatable)",
    )
    p.add_argument("--shots", type=int, default=0, help="few-shot examples (default 3)")
    p.add_argument("--few-shot-file", type=Path, help="rows for the few-shot examples")
    p.add_argument(
        "--checks",
        type=Path,
        help="YAML/JSON list of checks, e.g. "
        "[{type: regex, name: format, pattern: '...', fullmatch: true}]",
    )
    p.add_argument(
        "--format-regex",
        type=Path,
        help="a file holding a regex every answer must fully match ('format')",
    )
    p.add_argument("--max-new-tokens", type=int, default=0)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy")
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N rows only")
    p.add_argument("--no-wait", action="store_true", help="print the evaluation id and exit")
    p.add_argument("--save-report", type=Path, help="also download the HTML report here")
    p.set_defaults(func=cmd_eval)
    return p


def spec_from_args(args) -> dict:
    """The EvaluationSpec JSON for the gateway. Local paths are made absolute (the trainer
    reads them); a checks file that does not parse is an error here, before any request."""
    spec = {
        "adapter_id": args.adapter,
        "job_id": args.job,
        "eval_file": str(args.eval_file.resolve()) if args.eval_file else "",
        "eval_file_id": args.eval_file_id,
        "arms": [a.strip() for a in args.arms.split(",") if a.strip()],
        "compare_adapters": args.compare,
        "few_shot_k": args.shots,
        "few_shot_file": str(args.few_shot_file.resolve()) if args.few_shot_file else "",
        "checks": _checks(args),
        "max_new_tokens": args.max_new_tokens,
        "do_sample": args.sample,
        "seed": args.seed,
        "limit": args.limit,
    }
    if args.temperature is not None:
        spec["temperature"] = args.temperature
    if args.top_p is not None:
        spec["top_p"] = args.top_p
    return {k: v for k, v in spec.items() if v not in ("", 0, [], False)}


def _checks(args) -> list[dict]:
    checks = []
    if args.checks:
        try:
            checks = yaml.safe_load(args.checks.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise InvalidArgument(f"checks file {args.checks}: {err}", param="checks") from err
        if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
            raise InvalidArgument(
                f"checks file {args.checks}: expected a list of mappings such as {{type: rouge_l}}",
                param="checks",
            )
    if args.format_regex:
        pattern = args.format_regex.read_text().strip()
        checks.append({"type": "regex", "name": "format", "pattern": pattern, "fullmatch": True})
    if checks and not any(c.get("type") == "rouge_l" for c in checks):
        checks.append({"type": "rouge_l"})
    return checks


def cmd_eval(args, client: GatewayClient, out=sys.stdout) -> int:
    evaluation = client.create_evaluation(spec_from_args(args))
    print(
        f"evaluation {evaluation['id']}: {evaluation['adapter_id']} on {evaluation['rows']} "
        f"rows of {evaluation['eval_source']}",
        file=out,
        flush=True,
    )
    if args.no_wait:
        return 0

    def progress(e: dict) -> None:
        print(
            f"\r  {e['status']}: {e['done_requests']}/{e['total_requests']} requests",
            end="",
            file=out,
            flush=True,
        )

    evaluation = client.wait_evaluation(evaluation["id"], on_poll=progress)
    print(file=out)
    if evaluation["status"] != "succeeded":
        print(f"evaluation {evaluation['status']}: {evaluation['error']}", file=out)
        return 1
    print(format_table(evaluation), file=out)
    print(f"report: {evaluation['report_html']}", file=out)
    if args.save_report:
        args.save_report.write_bytes(client.evaluation_report(evaluation["id"], "html"))
        print(f"saved: {args.save_report}", file=out)
    return 0
