from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.errors import SpecError
from backend.state.machine_spec import MachineSpec, parse_spec, read_spec, render_spec, write_spec

P = Path("/state/machines/web/machine.toml")


def test_round_trip(tmp_path: Path) -> None:
    spec = MachineSpec(name="web", vcpus=2, memory_mib=512, kernel=Path("/k/vmlinuz"),
                       restart="on-failure", cmdline="quiet", autostart=True)
    path = tmp_path / "machine.toml"
    write_spec(path, spec)
    assert read_spec(path) == spec
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "web"\nmemmory_mib = 5\n', "unknown key 'memmory_mib'"),
        ('name = "web"\nvcpus = "two"\n', "key 'vcpus'"),
        ('name = "web"\nvcpus = 0\n', "key 'vcpus'"),
        ('name = "web"\nmemory_mib = -1\n', "key 'memory_mib'"),
        ('name = "web"\nvcpus = 99999999999\n', "key 'vcpus'"),
        ("vcpus = 1\n", "missing required key 'name'"),
        ("", "missing required key 'name'"),
        ('name = "../etc"\n', "invalid machine name"),
        ('name = "web"\nschema_version = 99\n', "newer than this boxui understands"),
        ('name = "web"\naccel = "hvf"\n', "key 'accel'"),
        ('name = "web"\nrestart = "sometimes"\n', "key 'restart'"),
        ('name = "web"\nautostart = "no"\n', "key 'autostart'"),
        ('name = "web"\nautostart = 1\n', "key 'autostart'"),
        ('name = "web"\ncmdline = "a\\nb"\n', "key 'cmdline'"),
        ('name = "web"\n[stop]\nacpi_timeout = 0\n', "key 'stop.acpi_timeout'"),
        ('name = "web"\n[stop]\nacpi_timeout = "30"\n', "key 'stop.acpi_timeout'"),
        ('name = "web"\n[stop]\nsigkill_timeout = 86400\n', "key 'stop.sigkill_timeout'"),
        ('name = "web"\n[stop]\nacpi_timout = 5\n', "unknown key 'stop.acpi_timout'"),
        ('name = "web"\nstop = 5\n', "key 'stop'"),
        ('name = "web\n', "invalid TOML"),
        ("name = 'web'\n[x\n", "invalid TOML"),
    ],
)
def test_bad_specs_give_one_line_naming_file_and_key(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text, P)
    message = str(info.value)
    assert message.startswith(str(P) + ":")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"\0" * 64, "NUL"), (b"\xff\xfe\x00bad", "not UTF-8"), (b'name = "we', "invalid TOML")],
)
def test_corrupt_bytes(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "machine.toml"
    path.write_bytes(data)
    with pytest.raises(SpecError, match=expected):
        read_spec(path)
    assert path.read_bytes() == data


def test_stop_table_is_read_and_written_only_when_set() -> None:
    spec = parse_spec('name = "web"\n[stop]\nacpi_timeout = 2\nquit_timeout = 0.5\n', P)
    assert (spec.stop.acpi_timeout, spec.stop.quit_timeout) == (2.0, 0.5)
    assert spec.stop.sigterm_timeout == 5.0 and spec.stop.sigkill_timeout == 5.0
    assert parse_spec(render_spec(spec), P) == spec
    plain = parse_spec('name = "web"\n', P)
    assert plain.stop.acpi_timeout == 30.0 and "[stop]" not in render_spec(plain)


def test_render_is_valid_toml_with_comment() -> None:
    text = render_spec(MachineSpec(name="a"))
    assert text.startswith("#")
    assert parse_spec(text, P).name == "a"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzzed_text_only_gives_typed_errors(text: str) -> None:
    try:
        spec = parse_spec(text, P)
    except SpecError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(spec, MachineSpec)


toml_scalars = (
    st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=20)
    | st.booleans()
    | st.floats(allow_nan=False)
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(
    ["name", "vcpus", "memory_mib", "disk_gib", "kernel", "initrd", "cmdline", "accel",
     "restart", "created_at", "schema_version", "hypervisor", "ssh_key", "bogus"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, toml_values, max_size=6))
def test_fuzzed_toml_documents_only_give_typed_errors(doc: dict[str, object]) -> None:
    text = tomli_w.dumps(doc)
    try:
        parse_spec(text, P)
    except SpecError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('liveness = { }', "key 'liveness': value error, give exactly one of exec"),
        ('liveness = { exec = "true", port = 22 }', "give exactly one of exec"),
        ('liveness = { exec = "true", intervall = 3 }', "unknown key 'liveness.intervall'"),
        ('liveness = { exec = "true", failures = 0 }', "key 'liveness.failures'"),
        ('liveness = { exec = "true", interval = 0.5 }', "key 'liveness.interval'"),
        ('liveness = { exec = "true", timeout = 0 }', "key 'liveness.timeout'"),
        ('liveness = { port = 8080 }', "liveness.port 8080 is not a published port"),
        ('liveness = "true"', "key 'liveness'"),
    ],
)
def test_bad_liveness_names_the_field(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(f'name = "web"\n{text}\n', P)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_liveness_round_trips(tmp_path: Path) -> None:
    spec = MachineSpec.model_validate({
        "name": "web", "ports": [{"guest": 80}],
        "liveness": {"port": 80, "interval": 5, "timeout": 2, "failures": 2}})
    write_spec(tmp_path / "machine.toml", spec)
    assert read_spec(tmp_path / "machine.toml") == spec
    probe = parse_spec('name = "web"\nliveness = { exec = "true" }\n', P).liveness
    assert probe is not None and (probe.interval, probe.timeout, probe.failures) == (10, 5, 3)
