"""Bad input, generated: configs and command lines get a clear message, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quiltsync.config import Config, parse_config
from quiltsync.errors import ConfigError

KEYS = ["daemon", "s3", "folder", "state_dir", "log_format", "log_level", "rescan_interval_seconds",
        "health_interval_seconds", "metrics_address", "endpoint_url", "region", "path", "package",
        "registry", "settle_seconds", "max_delay_seconds", "ignore", "allow_unversioned",
        "max_delete_fraction", "colour", "Path", ""]
scalars = st.one_of(
    st.text(max_size=30), st.integers(min_value=-2**63, max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.sampled_from(["team/data", "s3://bucket-a", "s3://b/x", "/nonexistent/dir", "json", "info",
                     "team/da\nta", "127.0.0.1:9464", "http://127.0.0.1:9000", "a/b/c", "s3://UPPER"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=5)


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else _toml_str(k)


def _toml_str(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    out = "".join(c if c.isprintable() or c == " " else f"\\u{ord(c):04x}" for c in out)
    return f'"{out}"'


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(v), repr(v))
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return _toml_str(str(v))


tables = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)
documents = st.fixed_dictionaries({
    "daemon": st.one_of(st.none(), tables),
    "s3": st.one_of(st.none(), tables),
    "folders": st.lists(tables, max_size=3),
    "top": tables,
})


def _render(doc: dict) -> str:
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc["top"].items()
             if k not in ("daemon", "s3", "folder")]
    for name in ("daemon", "s3"):
        if doc[name] is not None:
            lines.append(f"[{name}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc[name].items()]
    for f in doc["folders"]:
        lines.append("[[folder]]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in f.items()]
    return "\n".join(lines) + "\n"


def _check(text: str) -> None:
    try:
        result = parse_config(text, source="fuzz.toml")
    except ConfigError as e:
        lines = str(e).splitlines()
        assert lines and all(line.startswith("fuzz.toml: ") and len(line) > len("fuzz.toml: ") for line in lines)
        return
    assert isinstance(result, Config)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents)
def test_generated_configs_are_valid_or_rejected_with_one_line_per_problem(doc: dict) -> None:
    """Any config document either loads or raises ConfigError naming the file on every line."""
    _check(_render(doc))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_as_config_never_escapes_as_another_exception(text: str) -> None:
    """Not even TOML: a one-line 'not valid TOML' error, not a traceback."""
    _check(text)


WORDS = ["push", "status", "history", "restore", "check", "doctor", "run", "diff", "revert", "--config", "--folder",
         "--top-hash", "--at", "--path", "--limit", "--registry", "--dest", "--json", "--fix", "--force",
         "--allow-deletes", "-x", "--", "team/data"]
argvs = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=12)), max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(argvs)
def test_generated_command_lines_exit_2_or_78_with_a_message(argv: list[str]) -> None:
    """With no usable config, every command line is a usage error (2) or a config error (78)."""
    import contextlib
    import io

    from quiltsync.cli.main import main

    os.environ["QUILTSYNC_CONFIG"] = str(Path("/nonexistent-quiltsync-fuzz/config.toml"))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main([a for a in argv if a != "demo"])
            except SystemExit as e:  # --help / --version print and exit 0
                code = e.code if isinstance(e.code, int) else 2
    finally:
        os.environ.pop("QUILTSYNC_CONFIG", None)
    assert code in (0, 2, 78), (argv, code, err.getvalue())
    if code:
        text = err.getvalue()
        assert text.strip() and "Traceback" not in text
