"""Reports of a finished evaluation: Markdown and a self-contained HTML page (the loss
curve inlined as a data URI). Every number is
written with `number()`, so the report shows exactly what the API returns, rounded."""

import base64
import html
import json
from pathlib import Path

from trainer_service.evaluation.store import Evaluation
from tuneyard.adapter_store import Manifest
from tuneyard.eval_table import columns, number, table_rows

LOSS_BOUNDARY = (
    "Eval loss is the mean negative log-likelihood per reference-answer token, from the "
    "inference service's prompt logprobs (decoder_input_details) of prompt + reference; the "
    "reference starts after as many tokens as the service counts in the prompt alone. "
    "Perplexity is exp(eval loss). For a chat adapter the loss reference is the assistant's "
    "last turn as the chat template writes it (end-of-turn marker included), while the "
    "checks and the examples' reference are that turn's content."
)


def _settings(evaluation: Evaluation, manifest: Manifest, sampling: dict) -> dict:
    return {
        "evaluation": evaluation.id,
        "sampling (resolved)": sampling,
        "adapter": evaluation.adapter_id,
        "base model": manifest.base_model,
        "eval rows": f"{evaluation.rows} from {evaluation.eval_source}",
        "evaluation spec": evaluation.spec,
        "training job": manifest.job_id or "(unknown)",
        "training data": f"{manifest.dataset_path} ({manifest.rows})",
        "hyperparameters": manifest.hyperparameters,
        "training metrics": manifest.metrics,
    }


def markdown(
    evaluation: Evaluation, manifest: Manifest, loss_curve: Path | None, sampling: dict
) -> str:
    head, rows = columns(evaluation.result["arms"]), table_rows(evaluation.result["arms"])
    out = [
        f"# Evaluation {evaluation.id}: {evaluation.adapter_id}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", LOSS_BOUNDARY, ""]
    if loss_curve is not None:
        out += [f"Training loss curve: `{loss_curve}`", ""]
    out += ["## Settings", ""]
    out += [
        f"- **{k}**: `{json.dumps(v) if not isinstance(v, str) else v}`"
        for k, v in _settings(evaluation, manifest, sampling).items()
    ]
    out += ["", "## Examples", ""]
    for example in evaluation.result["examples"]:
        out += [
            f"### Row {example['line']}",
            "",
            "**Prompt**",
            "",
            _fence(example["prompt"]),
            "**Reference**",
            "",
            _fence(example["reference"]),
        ]
        for output in example["outputs"]:
            scores = ", ".join(f"{k} {number(v)}" for k, v in output["checks"].items())
            out += [f"**{output['arm']}** ({scores})", "", _fence(output["text"])]
    return "\n".join(out) + "\n"


def _fence(text: str) -> str:
    return "```text\n" + text.replace("```", "`\u200b``") + "\n```\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { white-space: pre-wrap; margin: 0; font-size: 0.9em; }
img { max-width: 45em; }
"""


def html_page(
    evaluation: Evaluation, manifest: Manifest, loss_curve: Path | None, sampling: dict
) -> str:
    e = html.escape
    head, rows = columns(evaluation.result["arms"]), table_rows(evaluation.result["arms"])
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Evaluation {e(evaluation.id)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Evaluation of {e(evaluation.adapter_id)}</h1>",
        "<table id='arms'><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>",
    ]
    for row in rows:
        cells = [f"<td>{e(c)}</td>" for c in row[:2]]
        cells += [f"<td class='num'>{e(c)}</td>" for c in row[2:]]
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts += ["</table>", f"<p>{e(LOSS_BOUNDARY)}</p>"]
    if loss_curve is not None and loss_curve.is_file():
        data = base64.b64encode(loss_curve.read_bytes()).decode()
        parts += [
            "<h2>Training loss</h2>",
            f"<img alt='training and eval loss' src='data:image/png;base64,{data}'>",
        ]
    parts += ["<h2>Settings</h2><table>"]
    for key, value in _settings(evaluation, manifest, sampling).items():
        text = value if isinstance(value, str) else json.dumps(value, indent=1)
        parts.append(f"<tr><th>{e(key)}</th><td><pre>{e(text)}</pre></td></tr>")
    parts += ["</table><h2>Examples</h2>"]
    arms = [a["name"] for a in evaluation.result["arms"]]
    parts.append(
        "<table id='examples'><tr><th>prompt</th><th>reference</th>"
        + "".join(f"<th>{e(a)}</th>" for a in arms)
        + "</tr>"
    )
    for example in evaluation.result["examples"]:
        cells = [
            f"<td><pre>{e(example['prompt'])}</pre></td>",
            f"<td><pre>{e(example['reference'])}</pre></td>",
        ]
        for output in example["outputs"]:
            scores = ", ".join(f"{k} {number(v)}" for k, v in output["checks"].items())
            cells.append(f"<td><pre>{e(output['text'])}</pre><small>{e(scores)}</small></td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_reports(
    folder: Path,
    evaluation: Evaluation,
    manifest: Manifest,
    loss_curve: Path | None,
    sampling: dict,
) -> tuple[Path, Path]:
    """`sampling`: the generation settings as run (defaults filled in, stop sequences)."""
    folder.mkdir(parents=True, exist_ok=True)
    md, page = folder / "report.md", folder / "report.html"
    md.write_text(markdown(evaluation, manifest, loss_curve, sampling), encoding="utf-8")
    page.write_text(html_page(evaluation, manifest, loss_curve, sampling), encoding="utf-8")
    return md, page
