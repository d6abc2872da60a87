"""Evaluation: an adapter against prompting its base model (zero-shot, few-shot) on held-out
rows, measured through the inference service, with Markdown and HTML reports."""
