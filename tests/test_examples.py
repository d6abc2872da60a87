"""The bundled example data and job specs: the demo and the format score rely on every email
following the house format, on held-out rows staying out of training, and on both specs
loading as they are shipped."""

import json
import re
from pathlib import Path

import pytest

from tuneyard.jobspec import JobSpec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
DATA = EXAMPLES / "data" / "marketing_emails"
FORMAT = re.compile((DATA / "format.regex").read_text().strip())
SPECS = ["marketing_email_cpu.yaml", "marketing_email_bloomz_8bit.yaml"]


def rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]


def test_split_sizes_and_columns():
    train, held = rows("train"), rows("heldout")
    assert 36 <= len(train) <= 44 and 6 <= len(held) <= 8
    for row in train + held:
        assert set(row) == {"product", "description", "email"}
        assert all(isinstance(v, str) and v.strip() == v and v for v in row.values())


def test_heldout_products_are_never_trained_on():
    train = {r["product"] for r in rows("train")}
    held = {r["product"] for r in rows("heldout")}
    assert len(train) == len(rows("train")) and len(held) == len(rows("heldout"))
    assert not train & held


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_every_email_follows_the_house_format(split):
    for row in rows(split):
        assert FORMAT.fullmatch(row["email"]), row["product"]
        assert row["email"].startswith(f"Subject: {row['product']} | ")


def test_bodies_are_written_not_templated():
    all_rows = rows("train") + rows("heldout")
    bodies = [r["email"].split("\n")[3].replace(r["product"], "X") for r in all_rows]
    assert len(set(bodies)) == len(bodies)
    assert len({b.split(".")[0] for b in bodies}) == len(bodies)


@pytest.mark.parametrize(
    "email",
    [
        # what an untuned model writes: another greeting and sign-off, or no subject hook
        "Subject: Nomad Solar Lantern\n\nDear customer,\nIt glows.\n\nBest regards,\nThe Team",
        "Subject: Nomad Solar Lantern | Glow\n\nHi there,\nIt glows.\n>> Buy now >>\n\n"
        "Cheers,\nThe Brightside Team",
        # the format followed, then rambling on instead of stopping
        "Subject: Nomad Solar Lantern | Glow\n\nHi there,\nIt glows.\n>> Buy now <<\n\n"
        "Cheers,\nThe Brightside Team\n\n### Email\nSubject: again",
    ],
)
def test_format_rejects_near_misses(email):
    assert not FORMAT.fullmatch(email.strip())


@pytest.mark.parametrize("name", SPECS)
def test_specs_load_and_render_every_row(name):
    spec = JobSpec.from_yaml(EXAMPLES / name)
    assert Path(spec.data.path) == DATA / "train.jsonl"
    assert JobSpec.from_proto(spec.to_proto()) == spec
    template = spec.template.build()
    assert template.fields == {"product", "description", "email"}
    for row in rows("train"):
        prompt = template.render_prompt(row)
        assert prompt.endswith("### Email\n") and row["description"] in prompt
        assert template.render_response(row) == row["email"]


def test_cpu_spec_targets_the_embedded_model():
    spec = JobSpec.from_yaml(EXAMPLES / "marketing_email_cpu.yaml")
    assert spec.base_model == "" and spec.quantization == "none"
    assert spec.adapter_name == "marketing-email" and spec.recipe == "causal_lm"
    assert set(spec.lora.target_modules) <= {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_bloomz_spec_is_the_seed_recipe():
    spec = JobSpec.from_yaml(EXAMPLES / "marketing_email_bloomz_8bit.yaml")
    assert spec.base_model == "bigscience/bloomz-3b" and spec.quantization == "8bit"
    assert spec.lora.r == 16 and spec.lora.target_modules == ["query_key_value"]
    assert spec.training.max_steps == 100
