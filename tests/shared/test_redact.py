import pytest

from tuneyard.errors import redact_paths


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("adapter 'x' not found in /srv/tuneyard/adapters", "adapter 'x' not found in adapters"),
        ("cannot read data file '/etc/passwd'", "cannot read data file 'passwd'"),
        (
            "base model folder /home/u/.cache/m/SmolLM2/ missing",
            "base model folder SmolLM2 missing",
        ),
        ("see /tmp/a/b.jsonl: line 3", "see b.jsonl: line 3"),
        # Not server paths: URLs, hub ids, fractions, the API's own routes, a lone slash word.
        ("at http://127.0.0.1:8080/v1/models", "at http://127.0.0.1:8080/v1/models"),
        ("hub id bigscience/bloomz-3b", "hub id bigscience/bloomz-3b"),
        ("ratio 1/2/3", "ratio 1/2/3"),
        ("upload it (POST /v1/files)", "upload it (POST /v1/files)"),
        ("/x alone", "/x alone"),
    ],
)
def test_absolute_paths_are_cut_to_their_last_part(text, shown):
    assert redact_paths(text) == shown
