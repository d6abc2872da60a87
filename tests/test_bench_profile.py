"""The profiler runs py-spy on both services under load; its summary reads py-spy's
collapsed stacks: own time and time with callees."""

import pytest

from benchmarks.profile_serving import main, summary


def test_summary_counts_own_and_inclusive_time(tmp_path):
    raw = tmp_path / "profile-inference.txt"
    raw.write_text(
        "_run (a/scheduler.py:150);_forward (a/scheduler.py:248);forward (t/linear.py:134) 6\n"
        "_run (a/scheduler.py:150);_forward (a/scheduler.py:248);forward (a/lora.py:76) 3\n"
        "_run (a/scheduler.py:150);_choose (a/scheduler.py:262) 1\n"
    )
    text = summary("inference", raw, top=3)
    assert text.splitlines()[0] == "== inference: 10 samples"
    own, inclusive = text.split("-- including callees")
    assert "60.0%  forward linear.py:134" in own and "30.0%  forward lora.py:76" in own
    assert "100.0%  _run scheduler.py:150" in inclusive
    assert "90.0%  _forward scheduler.py:248" in inclusive


@pytest.mark.slow
@pytest.mark.integration
def test_the_profiler_samples_both_services_under_load(tmp_path, capsys):
    outputs = main(
        [
            "--model=llama-tiny",
            "--dtype=float32",
            "--clients=4",
            "--adapters=2",
            "--requests-per-client=8",
            "--prompt-tokens=8",
            "--max-new-tokens=64",
            "--seconds=3",
            f"--out={tmp_path}",
        ]
    )
    assert set(outputs) == {"inference", "gateway"}
    printed = capsys.readouterr().out
    for name, path in outputs.items():
        header = summary(name, path, top=3).splitlines()[0]
        assert header in printed
        assert int(header.split(": ")[1].split()[0]) > 0  # "== name: N samples"
