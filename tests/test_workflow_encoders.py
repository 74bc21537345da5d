"""markup2im.workflow.encoders: which encoders are saved from the hub, and where."""

from __future__ import annotations

from pathlib import Path

from markup2im.workflow.encoders import HubEncoder, encoder_slug, is_local_encoder


def test_each_revision_gets_its_own_directory() -> None:
    assert encoder_slug("org/name", None) == "org--name"
    assert encoder_slug("org/name", "abc123") == "org--name@abc123"
    assert HubEncoder("org/name", "abc").path == "results/encoders/org--name@abc"


def test_offline_and_paths_are_local(tmp_path: Path) -> None:
    assert is_local_encoder("offline")
    assert is_local_encoder("./enc") and is_local_encoder("a/b/c")
    assert is_local_encoder(str(tmp_path))
    assert not is_local_encoder("EleutherAI/gpt-neo-125M")
