"""Where a server-side path may point. A job's `data.path`, `data.eval_path` (or a local
`data.dataset`) and an evaluation's `eval_file` / `few_shot_file` are read by the trainer
with its own rights, so they are allowed only under the configured data folders
(TUNEYARD_DATA_DIRS; default: the uploads folder and the bundled examples), after resolving
links. Uploaded file ids and hub ids are not paths and are not affected.

A refusal says the same whether the file exists or not, and does not name the folders."""

from pathlib import Path

from trainer_service.files import files_dir
from trainer_service.settings import TrainerSettings
from tuneyard.errors import InvalidArgument
from tuneyard.jobspec import JobSpec

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"


class DataRoots:
    """`uploads`: the uploaded files' folder, which a caller scoped to one project may not
    name by path (it holds every project's uploads); it names its own by file id."""

    def __init__(self, roots: list[Path], uploads: Path | None = None):
        self.roots = [Path(root).expanduser().resolve() for root in roots]
        self.uploads = Path(uploads).resolve() if uploads is not None else None

    @classmethod
    def of(cls, settings: TrainerSettings) -> "DataRoots":
        uploads = files_dir(settings)
        return cls(settings.data_dirs or [uploads, EXAMPLES_DIR], uploads)

    def allows(self, path: str | Path) -> bool:
        resolved = _resolved(path)
        return resolved is not None and any(resolved.is_relative_to(r) for r in self.roots)

    def check(self, path: str | Path, param: str, scoped: bool = False) -> None:
        if not self.allows(path):
            raise InvalidArgument(
                f"{param}: this server reads files only from its data folders "
                "(TUNEYARD_DATA_DIRS); upload the file (POST /v1/files) and give its id",
                param=param,
            )
        if scoped and self.uploads is not None and _resolved(path).is_relative_to(self.uploads):
            raise InvalidArgument(
                f"{param}: a project names its uploaded files by id (file-...), not by "
                "their path on the server",
                param=param,
            )

    def check_spec(self, spec: JobSpec, scoped: bool = False) -> None:
        """The job's data source, where it is a server path."""
        for name in ("path", "eval_path"):
            if getattr(spec.data, name):
                self.check(getattr(spec.data, name), f"data.{name}", scoped)
        if spec.data.dataset and _is_local(spec.data.dataset):
            self.check(spec.data.dataset, "data.dataset", scoped)
        for name in ("eval_file", "few_shot_file"):
            if (spec.evaluation or {}).get(name):
                self.check(spec.evaluation[name], f"evaluation.{name}", scoped)

    def check_evaluation(self, spec, scoped: bool = False) -> None:
        """An evaluation spec's files (evaluation.proto's EvaluationSpec)."""
        for name in ("eval_file", "few_shot_file"):
            if getattr(spec, name):
                self.check(getattr(spec, name), name, scoped)


def _resolved(path: str | Path) -> Path | None:
    try:
        return Path(path).expanduser().resolve()
    except (ValueError, OSError):  # no file can have that name (a NUL byte in it)
        return None


def _is_local(dataset: str) -> bool:
    """A dataset value is a path when it looks like one or names something on disk; else a
    hub id ("databricks/databricks-dolly-15k")."""
    return dataset.startswith(("/", ".", "~")) or Path(dataset).expanduser().exists()
