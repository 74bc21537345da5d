"""Downloading a hub dataset: local copies laid out like the hub, bad images, offline hubs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets_helpers import hub_like_dict

from markup2im.data.datasets import SPLITS, DatasetInfo, load_dataset_dir, read_dataset_info
from markup2im.data.hub import download_dataset
from markup2im.errors import ConfigError, DataError

CLI = [sys.executable, "-m", "markup2im"]
HUB_ID = "yuntian-deng/im2latex-100k"


def write_hub_layout(root: Path, dataset: datasets.DatasetDict) -> Path:
    """A directory laid out like the hub repository: data/<split>-00000-of-00001.parquet."""
    for split, part in dataset.items():
        part.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def test_download_loads_a_local_copy_laid_out_like_the_hub(tmp_path):
    source = hub_like_dict({"train": 5, "validation": 2, "test": 3})
    repo = write_hub_layout(tmp_path / "repo", source)
    out = tmp_path / "out"
    summary = download_dataset(
        HUB_ID, out, local_path=repo, cache_dir=tmp_path / "cache", progress=False
    )
    assert summary["splits"] == {"train": 5, "validation": 2, "test": 3}
    assert read_dataset_info(out) == DatasetInfo("math", "formula", 320, 64, 1)
    loaded = load_dataset_dir(out)
    for split in SPLITS:
        assert loaded[split]["formula"] == source[split]["formula"]
        assert loaded[split]["filename"] == source[split]["filename"]
        assert np.array_equal(
            np.asarray(loaded[split][0]["image"]), np.asarray(source[split][0]["image"])
        )


def test_download_loads_a_plain_directory_of_parquet_files_with_a_split_limit(tmp_path):
    source = hub_like_dict({"train": 4, "validation": 3, "test": 3})
    folder = tmp_path / "parquet"
    for split, part in source.items():
        part.to_parquet(str(folder / f"{split}.parquet"))
    out = tmp_path / "out"
    download_dataset(
        HUB_ID, out, local_path=folder, max_examples=2, cache_dir=tmp_path / "c", progress=False
    )
    assert {k: len(v) for k, v in load_dataset_dir(out).items()} == dict.fromkeys(SPLITS, 2)


def test_download_refuses_a_local_copy_with_bad_images_and_writes_nothing(tmp_path):
    source = hub_like_dict(
        {"train": 2, "validation": 1, "test": 1}, bad={("validation", 0): b"junk"}
    )
    repo = write_hub_layout(tmp_path / "repo", source)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"validation\[0\] validation0000.png: cannot decode"):
        download_dataset(HUB_ID, out, local_path=repo, cache_dir=tmp_path / "c", progress=False)
    assert not out.exists()


def test_unknown_dataset_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as info:
        download_dataset("someone/other-dataset", tmp_path / "o", progress=False)
    for hub_id in ["yuntian-deng/im2latex-100k", "yuntian-deng/im2html-100k",
                   "yuntian-deng/im2ly-35k-syn", "yuntian-deng/im2smiles-20k"]:  # fmt: skip
        assert hub_id in str(info.value)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local TCP port that refuses connections for the test's duration: bound by this test
    and never listened on, so no other program can open it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("mode", ["HF_HUB_OFFLINE", "unreachable-endpoint"])
def test_offline_download_fails_fast_and_says_what_to_do(tmp_path, mode, closed_port):
    env = (
        {"HF_HUB_OFFLINE": "1"}
        if mode == "HF_HUB_OFFLINE"
        else {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": f"http://127.0.0.1:{closed_port}"}
    )
    run_env = {**os.environ, **env, "HF_HOME": str(tmp_path / "hf")}
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        run_env.pop(proxy, None)
    proc = subprocess.run(
        [*CLI, "download", "--dataset", HUB_ID, "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,  # against a hang only; "fast" is checked below without a clock
        env=run_env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot download yuntian-deng/im2latex-100k" in proc.stderr
    assert "--local-path" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unreachable_hub_is_given_up_before_any_retry(tmp_path, monkeypatch, closed_port):
    """Fast without a wall clock: the refused probe stops the download before datasets' own
    request (which retries for about 25 s) is ever made."""
    import huggingface_hub.constants

    from markup2im.errors import HubUnavailableError

    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                     "ALL_PROXY", "all_proxy"):  # fmt: skip
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")

    def no_request(*args, **kwargs):
        raise AssertionError("datasets.load_dataset was called: the probe did not stop it")

    monkeypatch.setattr(datasets, "load_dataset", no_request)
    with pytest.raises(HubUnavailableError, match=f"cannot connect to 127.0.0.1:{closed_port}"):
        download_dataset(HUB_ID, tmp_path / "out", progress=False)
