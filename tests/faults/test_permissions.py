"""Item 11: the state dir is 0700 and its files 0600 even under a permissive umask; SSH
keys are 0600; a group-writable state dir is refused before anything is written in it;
and no code in backend/ or boxui/ runs a shell or builds a command line as a string.
(Sockets in 0700 dirs are checked with real guests in test_real_guests.py.)"""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.state.machine_spec import MachineSpec
from backend.supervision.boot_files import DefaultBootFiles
from tests.conftest import BOXUI, IMAGE_CACHE, REPO, cli_env, stop_background_daemons
from tests.faults.conftest import FaultRecorder

# --- the lint ------------------------------------------------------------------------

#: callables that run a command line through a shell, whatever their arguments
SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
               "asyncio.create_subprocess_shell", "pty.spawn"}
#: callables whose first argument is the program (or its argv list)
PROCESS_CALLS = {"subprocess.run", "subprocess.Popen", "subprocess.call",
                 "subprocess.check_call", "subprocess.check_output",
                 "asyncio.create_subprocess_exec", "os.posix_spawn", "os.posix_spawnp",
                 *(f"os.exec{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")),
                 *(f"os.spawn{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe"))}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def _string_built(node: ast.AST) -> bool:
    """An expression that makes one string out of pieces: a command line."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return any(_stringy(side) for side in (node.left, node.right))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return (node.func.attr in ("format", "join") and _stringy(node.func.value)) or \
            (node.func.attr == "join" and _dotted(node.func.value, {}) == "shlex")
    return False


def _stringy(node: ast.AST) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or \
        _string_built(node)


def lint_source(source: str, filename: str = "<code>") -> list[str]:
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases) or ""
        where = f"{filename}:{node.lineno}"
        if name in SHELL_CALLS or name.endswith(".subprocess_shell"):
            problems.append(f"{where}: {name} runs a shell")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                problems.append(f"{where}: shell= on {name or 'a call'}")
        if name in PROCESS_CALLS and node.args:
            first = node.args[0]
            if _string_built(first) or (isinstance(first, ast.Constant)
                                        and isinstance(first.value, str)
                                        and any(c.isspace() for c in first.value)):
                problems.append(f"{where}: {name} is given a command line built as a string")
        if name == "shlex.split" and node.args and _string_built(node.args[0]):
            problems.append(f"{where}: shlex.split of a string-built command line")
    return problems


def product_sources() -> Iterator[Path]:
    for package in ("backend", "boxui"):
        yield from sorted((REPO / package).rglob("*.py"))


@pytest.mark.fault("11. lint: no shell, no string-built command lines")
def test_no_shell_and_no_string_built_command_lines(fault: FaultRecorder) -> None:
    problems = []
    files = list(product_sources())
    assert len(files) > 40
    for path in files:
        problems += lint_source(path.read_text(), str(path.relative_to(REPO)))
        fault.cycle()
    assert problems == []


BAD_SNIPPETS = {
    "shell=True": "import subprocess\nsubprocess.run(['ls'], shell=True)",
    "shell=variable": "import subprocess\nsubprocess.Popen(cmd, shell=flag)",
    "os.system": "import os\nos.system('ls -l')",
    "aliased popen": "from os import popen as p\np('ls')",
    "create_subprocess_shell": "import asyncio\nasyncio.create_subprocess_shell('ls')",
    "loop.subprocess_shell": "loop.subprocess_shell(factory, 'ls')",
    "f-string argv": "import subprocess\nsubprocess.run(f'qemu -m {mem}')",
    "concatenated argv": "import subprocess as sp\nsp.check_output('ssh ' + host)",
    "percent argv": "from subprocess import call\ncall('rm %s' % path)",
    "format argv": "import subprocess\nsubprocess.run('kill {}'.format(pid))",
    "joined argv": "import subprocess\nsubprocess.run(' '.join(argv))",
    "shlex.join argv": "import shlex, subprocess\nsubprocess.run(shlex.join(argv))",
    "spaced constant": "import asyncio\nasyncio.create_subprocess_exec('qemu -version')",
    "exec string": "import os\nos.execvp(f'{tool} --x', [tool])",
    "split of built": "import shlex\nargv = shlex.split(f'qemu {args}')",
}
GOOD_SNIPPET = textwrap.dedent("""
    import asyncio, os, shlex, subprocess
    subprocess.run(["ls", "-l", path], check=True, shell=False)
    subprocess.run([*argv, f"--name={name}"])
    asyncio.create_subprocess_exec(*argv, f"-m {mem}")
    os.execvp(argv[0], argv)
    words = shlex.split(editor)
    remote = shlex.join(argv)
""")


@pytest.mark.fault("11. lint: no shell, no string-built command lines")
@pytest.mark.parametrize("kind", sorted(BAD_SNIPPETS))
def test_lint_catches(kind: str) -> None:
    assert len(lint_source(BAD_SNIPPETS[kind])) >= 1, kind


def test_lint_passes_argument_lists() -> None:
    assert lint_source(GOOD_SNIPPET) == []


# --- modes ---------------------------------------------------------------------------

def modes_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
            for p in [root, *root.rglob("*")] if not p.is_symlink()}


@pytest.mark.fault("11. permissions: modes under umask 000")
def test_private_modes_under_a_permissive_umask(tmp_path: Path, fault: FaultRecorder) -> None:
    home = tmp_path / "home"
    try:
        out = subprocess.run([*BOXUI, "create", "--no-start", "vm"], capture_output=True,
                             text=True, env=cli_env(home), umask=0, timeout=60)
    finally:
        stop_background_daemons(home)
    assert out.returncode == 0, out.stderr
    modes = modes_under(home)
    wrong = {p: f"{m:04o}" for p, m in modes.items()
             if m != (0o700 if (home / p).is_dir() or p == "." else 0o600)}
    assert wrong == {}
    assert {"machines/vm/machine.toml", "machines/vm/state.json", "events/log.jsonl",
            "supervisor.lock"} <= set(modes)
    fault.cycle()


@pytest.mark.fault("11. permissions: modes under umask 000")
@pytest.mark.skipif(not (IMAGE_CACHE / "current.json").exists(),
                    reason="no built guest image to make a machine's boot files from")
async def test_keys_are_private_under_a_permissive_umask(tmp_path: Path,
                                                         fault: FaultRecorder) -> None:
    machine_dir = tmp_path / "vm"
    machine_dir.mkdir(mode=0o700)
    old = os.umask(0)
    try:
        await DefaultBootFiles(IMAGE_CACHE).prepare(MachineSpec(name="vm"), machine_dir)
    finally:
        os.umask(old)
    modes = modes_under(machine_dir)
    keys = {p: m for p, m in modes.items() if "ed25519" in p and not p.endswith(".pub")}
    assert len(keys) == 2 and all(m == 0o600 for m in keys.values()), keys
    loose = {p: f"{m:04o}" for p, m in modes.items() if m & 0o077 and not p.endswith(".pub")}
    assert loose == {}
    fault.cycle()


@pytest.mark.fault("11. permissions: group-writable state dir refused")
@pytest.mark.parametrize("mode", [0o770, 0o702])
def test_group_or_world_writable_state_dir_is_refused(tmp_path: Path, mode: int,
                                                      fault: FaultRecorder) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(mode)
    for argv in (["daemon"], ["create", "--no-start", "vm"], ["ls"], ["start", "vm"]):
        out = subprocess.run([*BOXUI, *argv], capture_output=True, text=True,
                             env=cli_env(home), timeout=30)
        assert out.returncode == 1, (argv, out)
        assert out.stderr.strip() == (
            f"boxui: refusing state dir {home}: it is group- or world-writable "
            f"(mode {mode:04o}); fix it with chmod 700 {home}"), out.stderr
        fault.cycle()
    assert list(home.iterdir()) == [], "nothing may be written in a refused state dir"
