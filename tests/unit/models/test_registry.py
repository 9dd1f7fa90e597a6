"""The registry serves only versions that live inside it and load whole; anything else is one clear error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.registry import CURRENT_FILE, METADATA_FILE, RegistryError, current_version, load_bundle
from tests.unit.conftest import registry_copy


@pytest.mark.parametrize(
    "pointer",
    ["../outside", "/etc", "v1/../../outside", ".hidden", "a" * 300, "v1\nv2", "", "ｖ１"],
)
def test_a_pointer_that_is_not_a_plain_version_name_is_refused(tmp_path: Path, pointer: str) -> None:
    """Without the check, CURRENT = '../x' or an absolute path loads models from anywhere on the disk."""
    (tmp_path / CURRENT_FILE).write_text(pointer)
    with pytest.raises(RegistryError):
        current_version(tmp_path)


def test_a_version_that_is_a_link_out_of_the_registry_is_refused(tmp_path: Path, quick_models: Path) -> None:
    root, version = registry_copy(tmp_path, quick_models)
    (root / "linked").symlink_to(root / version)  # inside: fine
    (root / "escape").symlink_to(quick_models / version)  # a link that leaves the registry
    (root / CURRENT_FILE).write_text("linked")
    assert load_bundle(root).version == "linked"
    (root / CURRENT_FILE).write_text("escape")
    with pytest.raises(RegistryError, match="outside the registry"):
        current_version(root)


@pytest.mark.parametrize(
    "damage",
    [b"{not json", b"[]", b'{"feature_hash": 1}', b""],
    ids=["not-json", "not-an-object", "keys-missing", "empty"],
)
def test_a_corrupt_metadata_file_is_one_registry_error_naming_the_version(
    tmp_path: Path, quick_models: Path, damage: bytes
) -> None:
    """Before, a corrupt metadata.json raised JSONDecodeError/KeyError out of start-up and the worker died."""
    root, version = registry_copy(tmp_path, quick_models)
    (root / version / METADATA_FILE).write_bytes(damage)
    with pytest.raises(RegistryError, match=version):
        load_bundle(root)


def test_a_version_missing_a_member_is_a_registry_error(tmp_path: Path, quick_models: Path) -> None:
    root, version = registry_copy(tmp_path, quick_models)
    shutil.rmtree(root / version / "lstm")
    with pytest.raises(RegistryError, match="incomplete|broken"):
        load_bundle(root)
