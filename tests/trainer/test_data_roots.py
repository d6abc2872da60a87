"""Server paths are read only under the data folders: a job's data.path / data.dataset and
an evaluation's files, after resolving links; the refusal says nothing about whether the
file exists. Uploaded file ids and hub ids are not paths."""

import json

import pytest

from trainer_service.data_roots import EXAMPLES_DIR, DataRoots
from trainer_service.files import files_dir
from trainer_service.settings import TrainerSettings
from tuneyard.errors import InvalidArgument
from tuneyard.jobspec import JobSpec
from tuneyard.v1 import evaluation_pb2


def spec(**data) -> JobSpec:
    return JobSpec.parse(
        {
            "adapter_name": "a",
            "data": data,
            "template": {"prompt": "{{ product }}", "response": "{{ email }}"},
        }
    )


@pytest.fixture
def roots(tmp_path) -> DataRoots:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text(json.dumps({"product": "p", "email": "e"}))
    return DataRoots([tmp_path / "data"])


def test_a_path_under_a_root_is_allowed(roots, tmp_path):
    roots.check_spec(spec(path=str(tmp_path / "data" / "rows.jsonl")))
    roots.check_spec(spec(path=str(tmp_path / "data" / "not-yet.jsonl")))


@pytest.mark.parametrize("path", ["/etc/passwd", "/etc/hostname", "/nonexistent/x.jsonl"])
def test_a_path_elsewhere_is_refused_the_same_whether_or_not_it_exists(roots, path):
    with pytest.raises(InvalidArgument) as err:
        roots.check_spec(spec(path=path))
    assert err.value.param == "data.path"
    assert "data folders" in err.value.message and path not in err.value.message


def test_a_path_no_file_can_have_is_refused_not_an_error(roots, tmp_path):
    """Found by the gateway's fuzz test: a NUL byte made resolve() raise ValueError, a 500."""
    for path in [str(tmp_path / "data" / "x\x00.jsonl"), "\x00"]:
        with pytest.raises(InvalidArgument) as err:
            roots.check_spec(spec(path=path))
        assert err.value.param == "data.path"
    evaluation = evaluation_pb2.EvaluationSpec(few_shot_file="a\x00b")
    with pytest.raises(InvalidArgument) as err:
        roots.check_evaluation(evaluation)
    assert err.value.param == "few_shot_file"


def test_dot_dot_and_links_out_of_a_root_are_refused(roots, tmp_path):
    escape = str(tmp_path / "data" / ".." / ".." / "etc.jsonl")
    with pytest.raises(InvalidArgument):
        roots.check_spec(spec(path=escape))
    (tmp_path / "data" / "link.jsonl").symlink_to("/etc/passwd")
    with pytest.raises(InvalidArgument):
        roots.check_spec(spec(path=str(tmp_path / "data" / "link.jsonl")))
    (tmp_path / "data" / "dirlink").symlink_to("/etc")
    with pytest.raises(InvalidArgument):
        roots.check_spec(spec(path=str(tmp_path / "data" / "dirlink" / "passwd")))


def test_local_datasets_are_paths_hub_ids_and_file_ids_are_not(roots, tmp_path):
    with pytest.raises(InvalidArgument) as err:
        roots.check_spec(spec(dataset="/etc"))
    assert err.value.param == "data.dataset"
    roots.check_spec(spec(dataset="databricks/databricks-dolly-15k"))
    roots.check_spec(spec(file_id="file-" + "0" * 24))
    roots.check_spec(spec(dataset=str(tmp_path / "data")))


def test_evaluation_files_are_checked(roots, tmp_path):
    with pytest.raises(InvalidArgument) as err:
        roots.check_spec(
            spec(path=str(tmp_path / "data" / "rows.jsonl")).model_copy(
                update={"evaluation": {"eval_file": "/etc/passwd"}}
            )
        )
    assert err.value.param == "evaluation.eval_file"


def test_the_default_roots_are_the_uploads_and_the_examples(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNEYARD_DATA_DIRS", raising=False)
    settings = TrainerSettings(home=tmp_path)
    roots = DataRoots.of(settings)
    assert roots.roots == [files_dir(settings).resolve(), EXAMPLES_DIR]
    assert roots.allows(EXAMPLES_DIR / "data" / "marketing_emails.jsonl")
    assert not roots.allows(tmp_path / "elsewhere.jsonl")


def test_data_dirs_are_read_from_the_environment_separated_by_colons(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEYARD_DATA_DIRS", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert TrainerSettings(home=tmp_path).data_dirs == [tmp_path / "a", tmp_path / "b"]
