"""Follow a training job on the terminal: a progress bar with step, loss, tokens/s, ETA."""

import sys

from tqdm import tqdm

from tuneyard.client import GatewayClient


def follow_job(client: GatewayClient, job_id: str, out=sys.stderr) -> dict:
    """Show the job's events until it ends; return the final job object."""
    bar = None
    try:
        for event in client.stream_events(job_id):
            metrics = event.get("data") or {}
            if event.get("type") == "metrics" and metrics.get("step") is not None:
                if bar is None:
                    # Start at the first reported step, so the rate counts from here.
                    bar = tqdm(
                        total=metrics.get("total_steps"),
                        initial=metrics["step"],
                        unit="step",
                        file=out,
                        desc="training",
                        dynamic_ncols=True,
                    )
                bar.update(metrics["step"] - bar.n)
                bar.set_postfix_str(_postfix(metrics), refresh=True)
            elif event.get("message"):
                line = f"[{event.get('level', 'info')}] {event['message']}"
                if bar is not None:
                    bar.write(line, file=out)
                else:
                    print(line, file=out)
    finally:
        if bar is not None:
            bar.close()
    return client.get_job(job_id)


def _postfix(metrics: dict) -> str:
    parts = []
    if metrics.get("loss") is not None:
        parts.append(f"loss={metrics['loss']:.3f}")
    if metrics.get("eval_loss") is not None:
        parts.append(f"eval_loss={metrics['eval_loss']:.3f}")
    if metrics.get("tokens_per_second"):
        parts.append(f"{metrics['tokens_per_second']:.0f} tok/s")
    if metrics.get("eta_seconds") is not None:
        parts.append(f"eta {metrics['eta_seconds']:.0f}s")
    return " ".join(parts)
