"""The profile summary reads py-spy's collapsed stacks: own time and time with callees."""

from benchmarks.profile_serving import summary


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
