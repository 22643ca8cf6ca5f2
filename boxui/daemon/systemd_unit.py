"""The systemd unit that runs `boxui daemon` at boot (system unit) or login (user unit).

The unit names the very `boxui` that installed it, by absolute path (systemd has no
notion of a virtualenv or `~/.local/bin` on PATH), and pins the state dir with
`BOXUI_HOME`, so the daemon systemd starts supervises the machines the installing user
sees. It is only written, never enabled: enabling starts a daemon, and whether that
should happen at boot is the user's call, so `install` says how instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from backend.errors import BoxuiError
from backend.state.atomic_write import atomic_write_text, fsync_dir, os_error_reason

UNIT_NAME = "boxui.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
#: characters a unit file cannot carry inside a value, quoted or not
_UNSAFE = frozenset("\n\r\0")


class UnitError(BoxuiError):
    code = "systemd_unit"


@dataclass(frozen=True)
class UnitTarget:
    """Where the unit goes and how systemd is told about it: system or user manager."""

    path: Path
    system: bool

    @property
    def systemctl(self) -> str:
        return "systemctl" if self.system else "systemctl --user"

    @property
    def wanted_by(self) -> str:
        return wanted_by(self.system)

    @property
    def enabled_link(self) -> Path:
        """The symlink `systemctl enable` makes (for a unit in this directory)."""
        return self.path.parent / f"{self.wanted_by}.wants" / UNIT_NAME


def wanted_by(system: bool) -> str:
    # a user manager has no multi-user.target; its default.target is the user's session
    return "multi-user.target" if system else "default.target"


def unit_target(system: bool) -> UnitTarget:
    if system:
        return UnitTarget(SYSTEM_UNIT_DIR / UNIT_NAME, True)
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return UnitTarget(Path(config).absolute() / "systemd" / "user" / UNIT_NAME, False)


def boxui_command() -> list[str]:
    """The absolute command line of the boxui that runs now.

    `sys.argv[0]` is the `boxui` script (of a venv, pipx or uv tool), found on PATH when
    it was run by bare name; the path is kept as given, not resolved, so a link that an
    upgrade re-points still works. Run as `python -m boxui` it is this interpreter."""
    argv0 = sys.argv[0]
    found = argv0 if os.sep in argv0 else shutil.which(argv0)
    if found and not found.endswith(".py") and os.access(found, os.X_OK):
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-P", "-m", "boxui"]


def render_unit(command: list[str], home: Path, *, system: bool,
                idle_flag: bool) -> str:
    """The unit's text. `idle_flag`: the daemon takes `--idle-timeout`; 0 (never) is
    passed, as under systemd the daemon is meant to stay, whether or not VMs run."""
    argv = [*command, "daemon", *(["--idle-timeout", "0"] if idle_flag else [])]
    exec_start = " ".join(_exec_word(word, path=i == 0) for i, word in enumerate(argv))
    after = "After=network.target\n" if system else ""
    return (
        "# Written by `boxui daemon install`; `boxui daemon uninstall` removes it.\n"
        "[Unit]\n"
        "Description=boxui: supervisor of local microVMs\n"
        f"{after}"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        f"ExecStart={exec_start}\n"
        f"Environment={_quoted('BOXUI_HOME=' + str(home))}\n"
        "# Each VM's QEMU runs in a session of its own but still in this unit's cgroup, and\n"
        "# the default KillMode=control-group would kill every VM when the daemon stops or\n"
        "# restarts. VMs must outlive their supervisor: only the daemon is signalled, and\n"
        "# the next one re-adopts the VMs, as after any restart of boxui.\n"
        "KillMode=process\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "\n"
        "[Install]\n"
        f"WantedBy={wanted_by(system)}\n"
    )


def _exec_word(word: str, *, path: bool) -> str:
    """One ExecStart word: `%` would expand a specifier, and `$` a variable in an
    argument (systemd leaves the executable's path unexpanded)."""
    escaped = word if path else word.replace("$", "$$")
    if escaped and not any(ch in escaped for ch in ' \t"\'\\%;'):
        return escaped
    return _quoted(escaped)


def _quoted(value: str) -> str:
    """A double-quoted unit value: C escapes for `\\` and `"`, `%%` for `%`."""
    if _UNSAFE & set(value):
        raise UnitError(f"cannot put {value[:80]!r} in a systemd unit: it has a line break "
                        "or NUL")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def install_unit(target: UnitTarget, text: str, *, force: bool) -> str:
    """Write the unit atomically; "installed", "replaced" or "unchanged". A unit that
    differs (edited by hand, or another boxui's) is replaced only with `force`."""
    existing = _read(target.path)
    if existing == text:
        return "unchanged"
    if existing is not None and not force:
        raise UnitError(f"{target.path} exists and differs from the unit boxui would "
                        "write (--print shows it); --force replaces it")
    try:
        target.path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnitError(f"cannot create {target.path.parent}: {os_error_reason(exc)}") \
            from None
    atomic_write_text(target.path, text, mode=0o644)
    return "installed" if existing is None else "replaced"


def uninstall_unit(target: UnitTarget) -> bool:
    """Remove the unit; False if there was none. An enabled unit is left alone: removing
    it would leave systemd a dangling link and (until a reload) a unit it still runs."""
    if os.path.lexists(target.enabled_link):
        raise UnitError(f"{UNIT_NAME} is enabled; run `{target.systemctl} disable --now "
                        "boxui` first")
    try:
        target.path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise UnitError(f"cannot remove {target.path}: {os_error_reason(exc)}") from None
    with contextlib.suppress(OSError):  # removed either way; durable as far as it can be
        fsync_dir(target.path.parent)
    return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnitError(f"cannot read {path}: {os_error_reason(exc)}") from None


def enable_hints(target: UnitTarget) -> list[str]:
    """What to run next, one line each."""
    ctl = target.systemctl
    lines = [f"enable and start it: {ctl} daemon-reload && {ctl} enable --now boxui",
             "(a boxui daemon running now holds the state dir: `boxui daemon stop` it "
             "first; machines keep running and the unit's daemon re-adopts them)"]
    if not target.system:
        user = os.environ.get("USER") or "$USER"
        lines.append(f"to start it at boot rather than at login: loginctl enable-linger "
                     f"{user}")
    return lines
