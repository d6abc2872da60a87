"""`make demo`: start the stack locally, train the example adapter, and show the base model
and the tuned adapter answering the same held-out prompts side by side."""

import json
import shutil
import signal
import sys
import textwrap
import time
from pathlib import Path

from tuneyard.client import GatewayClient, GatewayError
from tuneyard.config import CommonSettings
from tuneyard.embedded_model import prepare
from tuneyard.eval_table import format_table
from tuneyard.jobspec import JobSpec
from tuneyard.local_stack import LocalStack
from tuneyard.progress import follow_job

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SPEC = EXAMPLES / "marketing_email_cpu.yaml"
HELDOUT = EXAMPLES / "data" / "marketing_emails" / "heldout.jsonl"
FORMAT_REGEX = HELDOUT.parent / "format.regex"
SHOWN = 2
MAX_NEW_TOKENS = 120
SHOWN_LINES = 16  # a rambling answer is cut here on screen


def side_by_side(left_title: str, left: str, right_title: str, right: str) -> str:
    width = max(30, min(60, (shutil.get_terminal_size((120, 40)).columns - 3) // 2))

    def column(text: str) -> list[str]:
        return [
            piece
            for line in text.splitlines() or [""]
            for piece in (textwrap.wrap(line, width) or [""])
        ]

    lines_l, lines_r = column(left)[:SHOWN_LINES], column(right)[:SHOWN_LINES]
    rows = [f"{left_title:<{width}} | {right_title}", f"{'-' * width}-+-{'-' * width}"]
    for i in range(max(len(lines_l), len(lines_r))):
        a = lines_l[i] if i < len(lines_l) else ""
        b = lines_r[i] if i < len(lines_r) else ""
        rows.append(f"{a:<{width}} | {b}")
    return "\n".join(rows)


def run() -> int:
    settings = CommonSettings()
    print(f"== preparing the embedded base model in {settings.home}", flush=True)
    prepare(settings.home)
    spec = JobSpec.from_yaml(SPEC)
    template = spec.template.build()
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()]

    print("== starting gateway, trainer and inference on loopback", flush=True)
    started = time.monotonic()
    with LocalStack(home=settings.home) as stack:
        print(
            f"   gateway at {stack.gateway_url} ({time.monotonic() - started:.0f}s); "
            f"logs in {settings.home / 'logs'}",
            flush=True,
        )
        client = GatewayClient(stack.gateway_url)
        job = client.create_job(spec)
        print(f"== training {spec.adapter_name!r} as job {job['id']}", flush=True)
        job = follow_job(client, job["id"], out=sys.stdout)
        if job["status"] != "succeeded":
            error = (job.get("error") or {}).get("message", "")
            print(f"job ended {job['status']}: {error}")
            return 1
        # Asked for by name, as a user would: the name moves to the new version once its
        # parity gate passed (the job's events say why when it did not).
        adapter = spec.adapter_name
        try:
            live = client.model(adapter)["root"]
        except GatewayError as err:
            live = str(err)
        if live != job["fine_tuned_model"]:
            print(
                f"{job['fine_tuned_model']} is published, but {adapter!r} does not serve it: {live}"
            )
            return 1
        print(f"== published {live} as {adapter!r}; base model vs adapter on held-out products\n")
        for row in rows[:SHOWN]:
            prompt = template.render_prompt(row)
            base = client.generate(prompt, None, max_new_tokens=MAX_NEW_TOKENS)
            tuned = client.generate(prompt, adapter, max_new_tokens=MAX_NEW_TOKENS)
            print(f"### {row['product']}\n")
            print(
                side_by_side(
                    "base model",
                    base["generated_text"].strip(),
                    f"adapter {adapter}",
                    tuned["generated_text"].strip(),
                )
            )
            print()
        print(
            "== evaluating the adapter against the base model, zero-shot and few-shot, "
            f"on {len(rows)} held-out products",
            flush=True,
        )
        evaluation = client.wait_evaluation(
            client.create_evaluation(
                {
                    "adapter_id": adapter,
                    "eval_file": str(HELDOUT),
                    "max_new_tokens": MAX_NEW_TOKENS,
                    "checks": [
                        {
                            "type": "regex",
                            "name": "format",
                            "fullmatch": True,
                            "pattern": FORMAT_REGEX.read_text().strip(),
                        },
                        {"type": "rouge_l"},
                    ],
                }
            )["id"]
        )
        if evaluation["status"] != "succeeded":
            print(f"evaluation ended {evaluation['status']}: {evaluation.get('error')}")
            return 1
        print(format_table(evaluation))
        print(f"\nreport: {evaluation['report_html']}\n")
        print("== stopping the services")
    return 0


def main() -> None:
    # Ctrl-C raises KeyboardInterrupt; LocalStack's __exit__ then stops the services.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sys.exit(run())
    except KeyboardInterrupt:
        print("\ninterrupted: services stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
