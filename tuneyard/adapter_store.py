"""The adapters volume: ADAPTERS_DIR/<name>/<version>/ holds a plain PEFT adapter, its
tokenizer files and a `tuneyard.json` manifest.

A version is written into a hidden staging folder beside its name and renamed into place,
so a reader never sees half a version. Versions are increasing integers; `name` resolves
to the newest, `name@version` to that one. Deleting is the same in reverse: the version is
renamed to a hidden trash folder (gone for every reader at once), then removed; a hidden
`.deleted-<version>` marker keeps its number from being given out again, so a server that
still holds the old weights under "name@version" can never take them for a new version.

The volume is shared: the inference service may run as another user than the trainer. A
version's folders get the store's mode (TUNEYARD_ADAPTERS_MODE, 0755 by default; 0750 to
share with the group only) and its files the same without the execute bits, whatever the
umask; so do the folders the store creates on the way to it.
"""

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tuneyard.errors import FailedPrecondition, InvalidArgument, NotFound

MANIFEST = "tuneyard.json"
LOSS_CURVE = "loss_curve.png"  # the training loss image the trainer puts in each version
MERGED = "merged"  # a version's folder of merged weights (the job's `merge`), a whole model
DEFAULT_MODE = 0o755
_DELETED = ".deleted-"
_TRASH = ".trash-"
# A project's adapters carry its id: "proj_0123456789abcdef:name" (see tuneyard.projects).
_NAME = re.compile(r"^(proj_[0-9a-f]{16}:)?[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class BaseQuantization(BaseModel):
    """How a base model's weights are held: what an adapter was trained against (its
    manifest), and what a server serves it on. Two bases hold the same weights when mode,
    and for 4 bit the data type and double quantization, agree; the dtypes only round."""

    mode: Literal["none", "8bit", "4bit"] = "none"
    quant_type: Literal["", "nf4", "fp4"] = ""
    """4 bit: the data type."""
    double_quant: bool = False
    """4 bit: the quantization constants quantized too."""
    dtype: str = ""
    """The weights' dtype (mode none), or the dtype the 8-/4-bit matmuls compute in; ''
    when not known."""

    @classmethod
    def of(
        cls, mode: str, quant_type: str = "nf4", double_quant: bool = True, dtype: str = ""
    ) -> "BaseQuantization":
        """A job's or a server's settings; the 4-bit ones count in mode 4bit only."""
        if mode != "4bit":
            return cls(mode=mode, dtype=dtype)
        return cls(mode=mode, quant_type=quant_type, double_quant=double_quant, dtype=dtype)

    def same_weights(self, other: "BaseQuantization") -> bool:
        return (self.mode, self.quant_type, self.double_quant) == (
            other.mode,
            other.quant_type,
            other.double_quant,
        )

    def describe(self) -> str:
        """e.g. '4bit nf4 double-quant (bfloat16)', '8bit', 'none (float32)'."""
        words = [self.mode]
        if self.mode == "4bit":
            words += [self.quant_type] + (["double-quant"] if self.double_quant else [])
        return " ".join(words) + (f" ({self.dtype})" if self.dtype else "")


class GateProbe(BaseModel):
    """One held-out prompt of a parity gate: the row's template fields (or, for a chat
    adapter, its messages and tools), the prompt they render to and its token ids, and the
    trained model's own greedy tokens, their log-probabilities and margins. Once compared,
    what the inference service made of the same: its prompt ids, and teacher-forced on the
    trained model's tokens, its likeliest token and its log-probability of the trained
    model's at each position."""

    fields: dict[str, str] = Field(default_factory=dict)
    messages: list[dict[str, str]] | None = None
    tools: list[dict] | None = None
    prompt: str
    prompt_ids: list[int] = Field(default_factory=list)
    ids: list[int]
    logprobs: list[float]
    margins: list[float] = Field(default_factory=list)
    """How far each token's log-probability stood above the next likeliest's."""
    served_prompt_ids: list[int] | None = None
    served_ids: list[int] | None = None
    served_logprobs: list[float] | None = None


class ParityGate(BaseModel):
    """Whether the inference service computes what the trained model computed, on a few
    held-out prompts, before the name moves to a version: the same prompt tokens, and on
    the trained model's own greedy tokens (teacher-forced) the same choice wherever the
    choice was clear and log-probabilities within the tolerance of the two sides' dtypes.
    `pending` until the trainer has compared; a version whose gate failed is published but
    not what its name means until it is promoted."""

    state: Literal["pending", "passed", "failed", "skipped"] = "pending"
    tokens: int
    """Greedy tokens per prompt."""
    min_agreement: float
    """The share of a prompt's clear positions (margin over `min_margin`) where the
    service's likeliest token must be the trained model's."""
    min_margin: float = 0.5
    logprob_tolerance: float | None = None
    """The largest |log-probability difference| allowed; None: the default for the two
    sides' dtypes (trainer_service/gate.py)."""
    probes: list[GateProbe] = Field(default_factory=list)
    trained_dtype: str = ""
    served_dtype: str = ""
    agreement: float | None = None
    """The lowest share over the prompts of clear positions where both sides agree."""
    max_logprob_diff: float | None = None
    """The largest |log-probability difference| of a trained model's token."""
    reason: str = ""
    promoted: bool = False

    @property
    def live(self) -> bool:
        return self.state in ("passed", "skipped") or self.promoted


class Manifest(BaseModel):
    """What an adapter was trained from and with; written by the trainer, read by serving."""

    name: str
    version: str = ""
    base_model: str
    base_model_revision: str = ""
    recipe: str
    template_prompt: str
    template_response: str
    template_sha256: str
    eos_token: str = ""
    stop: list[str] = Field(default_factory=list)
    dataset_path: str = ""
    dataset_sha256: str = ""
    rows: dict[str, int] = Field(default_factory=dict)
    hyperparameters: dict = Field(default_factory=dict)
    metrics: dict = Field(default_factory=dict)
    job_id: str = ""
    created_at: float = Field(default_factory=time.time)
    trained_on: BaseQuantization | None = None
    """How the base was quantized while the adapter trained; None: not recorded."""
    added_tokens: list[str] = Field(default_factory=list)
    """Tokens the adapter added to the base's vocabulary (its tokenizer is published with
    it); their ids follow the base's."""
    gate: ParityGate | None = None
    """The parity gate; None (versions from before it, checkpoints): live."""
    merged_on: BaseQuantization | None = None
    """The base the `merged/` weights were merged into: its original weights (none), or
    with the job's `merge_dequantized` the quantized ones it trained on, dequantized."""

    def base_quantization(self) -> BaseQuantization | None:
        """`trained_on`, or for versions published before it was recorded, what their
        job's hyperparameters say (without the compute dtype, which was not resolved)."""
        if self.trained_on is not None:
            return self.trained_on
        mode = self.hyperparameters.get("quantization")
        if mode not in ("none", "8bit", "4bit"):
            return None
        options = self.hyperparameters.get("quantization_options") or {}
        return BaseQuantization.of(
            mode, options.get("quant_type", "nf4"), options.get("double_quant", True)
        )


@dataclass(frozen=True)
class AdapterVersion:
    name: str
    version: str
    path: Path

    @property
    def id(self) -> str:
        """`name@version`, with the version as its folder spells it."""
        return f"{self.name}@{self.version}"

    def manifest(self) -> Manifest:
        return Manifest.model_validate_json((self.path / MANIFEST).read_text())

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidArgument(
            f"invalid adapter name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            param="adapter_name",
        )
    return name


def check_mode(value: int | str) -> int:
    """A folder mode: an int, or octal text ("0750", "750", "0o750"). The owner must keep
    rwx (the publisher writes the folder); nothing beyond the permission bits."""
    if isinstance(value, str):
        try:
            value = int(value.strip(), 8)
        except ValueError:
            raise ValueError(f"{value!r} is not an octal mode such as 0755 or 0750") from None
    if not 0 <= value <= 0o777 or value & 0o700 != 0o700:
        raise ValueError(
            f"mode {value:04o} must be within 0777 and give the owner rwx (0700), e.g. 0755"
        )
    return value


@dataclass(frozen=True)
class AdapterId:
    """What a request names: an adapter's `name` alone (the version that name means: its
    newest live one) or one version, `name@version`. The one reading of that syntax, for
    every service (as vLLM's LoRARequest carries a name and an id)."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> "AdapterId":
        """'name' -> (name, None); 'name@3' (or 'name@003') -> (name, 3)."""
        name, _, version = text.partition("@")
        check_name(name)
        if version and not version.isdigit():
            raise InvalidArgument(
                f"invalid adapter version {version!r}: expected a number", param="adapter_id"
            )
        return cls(name, int(version) if version else None)

    @staticmethod
    def name_of(text: str) -> str:
        """The name part of an id, unchecked (for labels and bookkeeping of ids that were)."""
        return text.partition("@")[0]

    def matches(self, version: "AdapterVersion") -> bool:
        """Whether `version` is what this id names, its liveness aside."""
        return version.name == self.name and (
            self.version is None or int(version.version) == self.version
        )

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"


class AdapterStore:
    def __init__(self, root: Path, mode: int = DEFAULT_MODE):
        """`mode`: of the folders a published version is made of; its files get it without
        the execute bits (0755 -> 0644)."""
        self.root = Path(root)
        self.mode = check_mode(mode)
        self.file_mode = self.mode & ~0o111

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def versions(self, name: str) -> list[AdapterVersion]:
        folder = self.root / check_name(name)
        if not folder.is_dir():
            return []
        found = [p for p in folder.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file()]
        return [AdapterVersion(name, p.name, p) for p in sorted(found, key=lambda p: int(p.name))]

    def all_versions(self) -> list[AdapterVersion]:
        return [v for name in self.names() for v in self.versions(name)]

    def resolve(self, adapter_id: str) -> AdapterVersion:
        """'name@version' is that version; 'name' the newest live one: its parity gate
        passed (or it has none) or it was promoted."""
        wanted = AdapterId.parse(adapter_id)
        name, version = wanted.name, wanted.version
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"adapter {name!r} not found", param="adapter_id")
        if version is None:
            return self._live(name, versions)
        for v in versions:
            if wanted.matches(v):
                return v
        raise NotFound(
            f"adapter {name!r} has no version {version}; versions: "
            + ", ".join(v.version for v in versions),
            param="adapter_id",
        )

    @staticmethod
    def _live(name: str, versions: list[AdapterVersion]) -> AdapterVersion:
        held = []
        for v in reversed(versions):
            try:
                gate = v.manifest().gate
            except (OSError, ValueError):  # unreadable: loading it says why
                return v
            if gate is None or gate.live:
                return v
            held.append(f"{v.id} ({gate.state})")
        raise FailedPrecondition(
            f"adapter {name!r} has no live version: {', '.join(held)} did not pass its parity "
            f"gate; ask for it as name@version, or promote it "
            f"(POST /v1/adapters/{versions[-1].id}/promote)",
            param="adapter_id",
        )

    def update_manifest(self, version: AdapterVersion, manifest: Manifest) -> None:
        """Replace a published version's manifest at once (a reader sees the old or the
        new one): its parity gate's outcome, a promotion."""
        staged = version.path / f".{MANIFEST}.{os.urandom(4).hex()}"
        staged.write_text(manifest.model_dump_json(indent=2))
        os.chmod(staged, self.file_mode)
        os.replace(staged, version.path / MANIFEST)

    def promote(self, adapter_id: str) -> AdapterVersion:
        """Make 'name@version' live whatever its parity gate said: 'name' then means it
        unless a newer version is live."""
        if AdapterId.parse(adapter_id).version is None:
            raise InvalidArgument("promote names one version: name@version", param="adapter_id")
        version = self.resolve(adapter_id)
        manifest = version.manifest()
        if manifest.gate is not None and not manifest.gate.promoted:
            gate = manifest.gate.model_copy(update={"promoted": True})
            self.update_manifest(version, manifest.model_copy(update={"gate": gate}))
        return version

    def staging_dir(self, name: str) -> Path:
        """A fresh hidden folder on the same filesystem as the final version."""
        folder = self.root / check_name(name)
        self._make_dirs(folder)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))  # 0700 until published

    def publish(self, staging: Path, manifest: Manifest) -> AdapterVersion:
        """Rename a complete staging folder into the next free version number."""
        folder = self.root / check_name(manifest.name)
        while True:
            existing = [int(v.version) for v in self.versions(manifest.name)]
            existing += self._deleted_numbers(manifest.name)
            version = str(max(existing, default=0) + 1)
            manifest.version = version
            (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2))
            self._apply_mode(staging)
            try:
                # rename() of a folder fails if the target exists: another publisher won.
                os.rename(staging, folder / version)
            except OSError:
                if (folder / version).exists():
                    continue
                raise
            return AdapterVersion(manifest.name, version, folder / version)

    def delete(self, adapter_id: str) -> list[AdapterVersion]:
        """Remove "name@version", or every version of "name"; returns what went, oldest
        first. Oldest first, so that "name" resolves to its newest version until the end."""
        wanted = AdapterId.parse(adapter_id)
        name = wanted.name
        doomed = self.versions(name) if wanted.version is None else [self.resolve(adapter_id)]
        if not doomed:
            raise NotFound(f"adapter {name!r} not found", param="adapter_id")
        folder = self.root / name
        deleted = []
        for v in doomed:
            marker = folder / f"{_DELETED}{v.version}"
            marker.touch()  # before the rename: the number stays taken whatever happens next
            os.chmod(marker, self.file_mode)
            try:
                os.rename(v.path, folder / f"{_TRASH}{v.version}-{os.urandom(4).hex()}")
            except FileNotFoundError:  # another delete took it
                continue
            deleted.append(v)
        for trash in folder.glob(f"{_TRASH}*"):  # also what a crash left behind
            shutil.rmtree(trash, ignore_errors=True)
        return deleted

    def _deleted_numbers(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        numbers = (p.name.removeprefix(_DELETED) for p in folder.glob(f"{_DELETED}*"))
        return [int(n) for n in numbers if n.isdigit()]

    @staticmethod
    def discard(staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def _make_dirs(self, folder: Path) -> None:
        """Create `folder` and its missing parents with the store's mode (mkdir's own mode
        is cut by the umask); folders that exist are left as they are."""
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:  # another publisher made it
                continue
            os.chmod(path, self.mode)

    def _apply_mode(self, staging: Path) -> None:
        """The store's modes on a staged version, before it is renamed into place."""
        for folder, _, files in os.walk(staging):  # symbolic links are left alone
            os.chmod(folder, self.mode)
            for name in files:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.chmod(path, self.file_mode)
