"""Versioned artifacts: `<out>/<version>/{lightgbm,lstm,transformer}/` + metadata.json; `<out>/CURRENT` names the
version in service and `<out>/HISTORY` the promotions in order.

Loading serves LightGBM natively and the sequence models through onnxruntime (models.onnx_serving), so a
process that only scores never imports torch.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from models.base import ProbabilityModel
from models.ensemble import EnsembleConfig
from models.features import FEATURE_NAMES, feature_hash

CURRENT_FILE = "CURRENT"
HISTORY_FILE = "HISTORY"
METADATA_FILE = "metadata.json"
MEMBER_ORDER = ("lightgbm", "lstm", "transformer")
# a version is one folder name inside the registry: no separators, no "..", no hidden names
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
POINTER_MAX_BYTES = 256


class RegistryError(ValueError):
    """The registry names a version that cannot be served: outside the registry, missing, or broken."""


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """A loaded model version: its members (in MEMBER_ORDER), the ensemble config and the metadata."""

    path: Path
    version: str
    symbol: str
    horizon_minutes: int
    members: tuple[ProbabilityModel, ...]
    ensemble: EnsembleConfig
    metadata: dict[str, Any]

    @property
    def window(self) -> int:
        """Feature rows the longest member reads."""
        return max(m.window for m in self.members)

    @property
    def member_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.members)


def code_version() -> str:
    """Package version plus a hash of the models package's source: the code that trained a version."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    try:
        from importlib.metadata import version

        package = version("mlrisk")
    except Exception:  # not installed (a bare checkout): the source hash alone still identifies the code
        package = "unknown"
    return f"{package}+{digest.hexdigest()[:12]}"


def save_version(
    out_dir: Path,
    version: str,
    members: list[ProbabilityModel],
    metadata: dict[str, Any],
    promote_now: bool = True,
) -> Path:
    """Write every member into its subdirectory and the metadata; optionally point CURRENT at it."""
    folder = Path(out_dir) / version
    folder.mkdir(parents=True, exist_ok=True)
    for member in members:
        member.save(folder / member.name)
    (folder / METADATA_FILE).write_bytes(
        orjson.dumps(metadata, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    if promote_now:
        promote(out_dir, version)
    return folder


def promote(out_dir: Path, version: str) -> None:
    """Point CURRENT at `version` (written aside and renamed, so readers never see half a name), and add it to
    HISTORY, the promotions in order, which `rollback` walks back."""
    out = Path(out_dir)
    if not (out / version / METADATA_FILE).is_file():
        raise FileNotFoundError(f"no model version {version!r} under {out}")
    _write_whole(out / CURRENT_FILE, version + "\n")
    with (out / HISTORY_FILE).open("a", encoding="utf-8") as history:
        history.write(version + "\n")


def _write_whole(path: Path, text: str) -> None:
    """Write aside and rename, so that readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def promotion_history(model_dir: Path) -> list[str]:
    path = Path(model_dir) / HISTORY_FILE
    return path.read_text(encoding="utf-8").split() if path.is_file() else []


def rollback(model_dir: Path) -> tuple[str, str]:
    """Point CURRENT back at the version promoted before the current one; returns (from, to).

    The rolled-back version leaves HISTORY, so a second rollback goes one further back.
    """
    out = Path(model_dir)
    current = current_version(out)
    history = promotion_history(out)
    while history and history[-1] != current:
        history.pop()  # CURRENT was set by hand: the history after it does not apply
    if len(history) < 2:
        raise ValueError(f"nothing to roll back to: {current} is the first promoted version in {out}")
    history.pop()
    previous = history[-1]
    _write_whole(out / CURRENT_FILE, previous + "\n")
    _write_whole(out / HISTORY_FILE, "".join(v + "\n" for v in history))
    return current, previous


def current_version(model_dir: Path) -> str:
    """The version CURRENT names, checked to be a folder name inside `model_dir` (RegistryError otherwise)."""
    pointer = Path(model_dir) / CURRENT_FILE
    if not pointer.is_file():
        raise FileNotFoundError(f"no {CURRENT_FILE} file in {model_dir}: train a model first (mlrisk train)")
    raw = pointer.read_bytes()[: POINTER_MAX_BYTES + 1]
    try:
        version = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise RegistryError(f"{pointer} is not text") from None
    return checked_version(model_dir, version)


def checked_version(model_dir: Path, version: str) -> str:
    """`version` if it names a folder directly inside `model_dir`, symbolic links resolved; RegistryError if not."""
    if not VERSION_NAME.fullmatch(version) or ".." in version:
        raise RegistryError(f"model version name {version[:120]!r} is not a plain folder name of the registry")
    root = Path(model_dir).resolve()
    if (root / version).resolve().parent != root:
        raise RegistryError(f"model version {version!r} resolves outside the registry {root}")
    return version


def load_member(folder: Path, name: str) -> ProbabilityModel:
    """One member from its folder: LightGBM natively, the sequence models through onnxruntime."""
    if name == "lightgbm":
        from models.lightgbm_model import LightGBMModel

        return LightGBMModel.load(folder, num_threads=1)
    from models.onnx_serving import OnnxSequenceModel

    return OnnxSequenceModel.load(folder)


def load_bundle(model_dir: Path | str, version: str | None = None) -> ModelBundle:
    """Load the CURRENT version (or `version`) of `model_dir`; refuses models trained on other features."""
    model_dir = Path(model_dir)
    version = checked_version(model_dir, version) if version else current_version(model_dir)
    folder = model_dir / version
    try:
        metadata = orjson.loads((folder / METADATA_FILE).read_bytes())
        if not isinstance(metadata, dict):
            raise TypeError(f"{METADATA_FILE} holds {type(metadata).__name__}, not an object")
        trained_on = metadata["feature_hash"]
        if trained_on != feature_hash() or tuple(metadata["features"]) != FEATURE_NAMES:
            raise RegistryError(
                f"model {version} was trained on features {trained_on}, this code computes {feature_hash()}: retrain"
            )
        config = EnsembleConfig.from_dict(metadata["ensemble"])
        members = tuple(load_member(folder / name, name) for name in config.members)
        return ModelBundle(
            path=folder,
            version=version,
            symbol=str(metadata["symbol"]),
            horizon_minutes=int(metadata["horizon_minutes"]),
            members=members,
            ensemble=config,
            metadata=metadata,
        )
    except RegistryError:
        raise
    except FileNotFoundError as error:
        raise RegistryError(f"model version {version} is incomplete: {error}") from error
    except Exception as error:  # a corrupt file of any kind: one clear error naming the version
        raise RegistryError(f"model version {version} is broken: {type(error).__name__}: {error}"[:500]) from error


def version_fingerprint(model_dir: Path, version: str) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and modification times of a version's files: a failed version is retried once this changes."""
    folder = Path(model_dir) / version
    if not folder.is_dir():
        return ()
    entries = []
    for path in sorted(folder.rglob("*"))[:1000]:
        if path.is_file():
            stat = path.stat()
            entries.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)
