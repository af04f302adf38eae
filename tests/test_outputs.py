"""The output policy (hardreid.outputs): a command writes only into what it owns and deletes only what its
marker lists; outputs that are inputs are refused; every refusal is one line naming the path."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from hardreid.errors import UserError
from hardreid.outputs import MARKER, claim_file, claim_folder, read_marker, refuse_input_overlap


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_new_folder_is_created_and_marked(tmp_path):
    out = claim_folder(tmp_path / "a" / "b", "extract")
    assert out.path.is_dir() and read_marker(out.path)["command"] == "extract" and out.files == []
    out.record("features.npy", "shards")
    assert read_marker(out.path)["files"] == ["features.npy", "shards"]
    again = claim_folder(tmp_path / "a" / "b", "extract")  # the same command takes its own folder back
    assert again.files == ["features.npy", "shards"]


def test_empty_folder_is_taken(tmp_path):
    (tmp_path / "empty").mkdir()
    assert claim_folder(tmp_path / "empty", "index").command == "index"


def test_foreign_folder_is_refused_and_untouched(tmp_path):
    folder = tmp_path / "mine"
    (folder / "shards").mkdir(parents=True)
    (folder / "features.npy").write_bytes(b"user data")
    (folder / "shards" / "x").write_text("keep")
    before = _tree_hashes(folder)
    with pytest.raises(UserError, match=r"--output .*mine is a folder hardreid did not write \(2 entries: features.npy, shards\).*--overwrite") as err:
        claim_folder(folder, "extract")
    assert "\n" not in str(err.value)
    assert _tree_hashes(folder) == before and not (folder / MARKER).exists()


def test_overwrite_adopts_a_folder_but_may_delete_nothing_of_it(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "features.npy").write_bytes(b"user data")
    out = claim_folder(folder, "extract", overwrite=True)
    assert out.adopted and out.unowned("features.npy", "shards") == ["features.npy"]
    assert not out.remove("features.npy") and (folder / "features.npy").read_bytes() == b"user data"
    out.record("features.npy")  # the command writes it now: from here on it is the command's own
    assert out.remove("features.npy") and not (folder / "features.npy").exists()


def test_output_of_another_command_is_refused(tmp_path):
    claim_folder(tmp_path / "feats", "extract").record("features.npy")
    with pytest.raises(UserError, match=r"holds the output of 'hardreid extract', not of 'hardreid index'"):
        claim_folder(tmp_path / "feats", "index")
    assert read_marker(tmp_path / "feats")["command"] == "extract"


def test_earlier_version_output_is_recognised(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    (folder / "notes.txt").write_text("user")
    out = claim_folder(folder, "extract", earlier_version=lambda f: ["manifest.json"] if (f / "manifest.json").exists() else [])
    assert out.files == ["manifest.json"] and not out.owns("notes.txt")


@pytest.mark.parametrize("where", ["same", "inside", "link"])
def test_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path, where):
    images = tmp_path / "images"
    images.mkdir()
    (images / "0001_c1_0.jpg").write_bytes(b"jpeg")
    before = _tree_hashes(images)
    if where == "same":
        output = images
    elif where == "inside":
        output = images / "feats"
    else:
        output = tmp_path / "alias"
        output.symlink_to(images)
    with pytest.raises(UserError, match=r"never writes (over|into) what it reads"):
        claim_folder(output, "extract", inputs={"--images": images}, overwrite=True)
    assert _tree_hashes(images) == before and not (images / MARKER).exists()


def test_file_output_rules(tmp_path):
    ckpt = tmp_path / "best.pth"
    ckpt.write_bytes(b"weights")
    with pytest.raises(UserError, match=r"--json .*best.pth is the same path as --checkpoint"):
        claim_file(ckpt, "--json", inputs={"--checkpoint": ckpt}, overwrite=True)
    existing = tmp_path / "scores.json"
    existing.write_text("{}")
    with pytest.raises(UserError, match=r"--json .*scores.json already exists: pass --overwrite"):
        claim_file(existing, "--json")
    assert claim_file(existing, "--json", overwrite=True) == existing
    assert claim_file(tmp_path / "new" / "x.json", "--json") == tmp_path / "new" / "x.json"
    assert existing.read_text() == "{}" and ckpt.read_bytes() == b"weights"


def test_relative_and_absolute_spellings_are_the_same_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("model.pth").write_bytes(b"w")
    with pytest.raises(UserError, match="same path"):
        refuse_input_overlap("./sub/../model.pth", "--output", {"--checkpoint": tmp_path / "model.pth"})


def test_damaged_marker_is_one_line(tmp_path):
    (tmp_path / MARKER).write_text("{not json")
    with pytest.raises(UserError, match=r"cannot read .*\.hardreid-output\.json"):
        claim_folder(tmp_path, "extract")
    (tmp_path / MARKER).write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="is not a hardreid output marker"):
        claim_folder(tmp_path, "extract")


def test_remove_never_follows_a_listed_symlink_into_user_files(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "precious").write_text("keep")
    out = claim_folder(tmp_path / "out", "extract")
    out.record("shards")
    os.symlink(user, out.path / "shards")
    assert out.remove("shards")
    assert (user / "precious").read_text() == "keep"


# -- property tests: any file name, any folder content ---------------------------------------------------------------
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=40) \
    .filter(lambda n: n not in (".", "..") and len(n.encode("utf-8")) < 200)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(existing=st.lists(_NAMES, min_size=1, max_size=4, unique=True), target=_NAMES, overwrite=st.booleans())
@example(existing=["\n"], target="0", overwrite=False)  # found by hypothesis: a file named by a newline broke the line
def test_claims_never_change_or_delete_an_existing_file(tmp_path_factory, existing, target, overwrite):
    """Whatever the names: claiming a foreign folder (without --overwrite) or an existing file refuses in one line
    and leaves every byte; with --overwrite the claim itself still writes nothing but the marker."""
    folder = tmp_path_factory.mktemp("user")
    for index, name in enumerate(existing):
        (folder / name).write_bytes(f"user file {index}".encode())
    before = _tree_hashes(folder)
    if overwrite:
        claim_folder(folder, "extract", overwrite=True)
        assert _tree_hashes(folder) == {**before, MARKER: _tree_hashes(folder)[MARKER]}
    else:
        with pytest.raises(UserError) as err:
            claim_folder(folder, "extract")
        assert "\n" not in str(err.value) and _tree_hashes(folder) == before
    path = folder / target
    if path.is_file() and not overwrite:
        with pytest.raises(UserError, match="already exists"):
            claim_file(path, "--json")
    elif not path.is_dir():
        claim_file(path, "--json", overwrite=overwrite)
    assert {k: v for k, v in _tree_hashes(folder).items() if k != MARKER} == before


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_NAMES, min_size=1, max_size=3))
def test_an_output_anywhere_inside_an_input_is_refused(tmp_path_factory, parts):
    images = tmp_path_factory.mktemp("images")
    output = images.joinpath(*parts)
    with pytest.raises(UserError, match="never writes (over|into) what it reads"):
        claim_folder(output, "extract", inputs={"--images": images}, overwrite=True)
    assert not output.exists() or output == images
