"""Config validation: one clear line per problem, exit 78, no traceback."""

from __future__ import annotations

import re
import textwrap
import tomllib
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, folder_block: str, extra: str = "") -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "other").mkdir(exist_ok=True)
    p = tmp_path / "bad.toml"
    p.write_text(textwrap.dedent(extra) + textwrap.dedent(folder_block))
    return p


GOOD = """\
[[folder]]
path = "{tmp}/data"
package = "team/data"
registry = "s3://bucket-a"
"""

CASES = {
    "invalid package name": (GOOD.replace("team/data", "team/da/ta"), "folder[0].package", "namespace/name"),
    "package with a trailing newline": (GOOD.replace('"team/data"', '"team/data\\n"'), "folder[0].package", "namespace/name"),
    "registry with a path": (GOOD.replace("s3://bucket-a", "s3://bucket-a/some/prefix"), "folder[0].registry", "s3://BUCKET"),
    "registry not s3": (GOOD.replace("s3://bucket-a", "/local/dir"), "folder[0].registry", "s3://BUCKET"),
    "missing folder": (GOOD.replace("/data", "/nope"), "folder[0].path", "does not exist"),
    "settle above max delay": (GOOD + "settle_seconds = 40\nmax_delay_seconds = 30\n", "folder[0]", "must not exceed"),
    "unknown key": (GOOD + "colour = \"blue\"\n", "folder[0].colour", "unknown key"),
    "wrong type": (GOOD + "settle_seconds = \"soon\"\n", "folder[0].settle_seconds", "number"),
    "same path twice": (GOOD + GOOD.replace("team/data", "team/other"), "folder[1].path", "already watched"),
    "same package twice": (GOOD + GOOD.replace("{tmp}/data", "{tmp}/other"), "folder[1].package", "already used"),
    "no folders": ("[daemon]\nlog_level = \"info\"\n", "folder", "missing"),
    "bad log level": ("[daemon]\nlog_level = \"loud\"\n" + GOOD, "daemon.log_level", "info"),
    "not toml": ("[[folder]\npath=", "", "not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_errors_name_file_key_and_expectation(tmp_path: Path, case: str) -> None:
    """Each invalid config exits 78 with one line naming the file, the key and what is expected."""
    text, key, expected = CASES[case]
    path = _config(tmp_path, text.replace("{tmp}", str(tmp_path)))
    proc = run_cli("--config", str(path), "push")
    assert proc.returncode == 78, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0] and key in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_a_missing_config_file_says_how_to_give_one(tmp_path: Path) -> None:
    """No config file: exit 78 and a hint about --config and QUILTSYNC_CONFIG."""
    proc = run_cli("--config", str(tmp_path / "absent.toml"), "status")
    assert proc.returncode == 78
    assert "--config" in proc.stderr and "QUILTSYNC_CONFIG" in proc.stderr


def test_config_path_comes_from_the_environment_when_not_given(tmp_path: Path) -> None:
    """$QUILTSYNC_CONFIG is used when --config is absent."""
    path = _config(tmp_path, GOOD.replace("{tmp}", str(tmp_path)),
                   f'[daemon]\nstate_dir = "{tmp_path}/state"\n')
    proc = run_cli("status", "--json", env={"QUILTSYNC_CONFIG": str(path)})
    assert proc.returncode == 0, proc.stderr
    assert '"team/data"' in proc.stdout


def test_usage_errors_exit_2_without_traceback() -> None:
    """An unknown command or a missing argument is a usage error (exit 2)."""
    for args in (["frobnicate"], ["restore", "team/data"], []):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.strip()


def test_relative_folder_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    """`path = "data"` means the data folder beside the config file."""
    from quiltsync.config import load_config

    path = _config(tmp_path, GOOD.replace("{tmp}/data", "data"))
    assert load_config(path).folder[0].path == tmp_path / "data"


def test_config_example_loads_and_documents_every_key() -> None:
    """config.example.toml is valid and mentions every field of every section."""
    from quiltsync.config import Config, DaemonConfig, FolderConfig, S3Config, load_config

    example = ROOT / "config.example.toml"
    text = example.read_text()
    raw = tomllib.loads(text)
    assert raw["folder"], "the example configures at least one folder"
    cfg_text = text.replace(raw["folder"][0]["path"], str(ROOT))
    tmp = ROOT / ".pytest_cache" / "example.toml"
    tmp.parent.mkdir(exist_ok=True)
    tmp.write_text(cfg_text)
    load_config(tmp)
    for model, section in ((DaemonConfig, "daemon"), (S3Config, "s3"), (FolderConfig, "folder")):
        for field in model.model_fields:
            documented = rf"^#?\s*({field}\s*=|\[{section}\.{field}\])"  # a key, or a table like [folder.metadata]
            assert re.search(documented, text, re.M), f"[{section}] {field} is not documented"
    assert set(Config.model_fields) == {"daemon", "s3", "folder"}
