"""Missing host tools and failing commands produce one readable line."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.guest.errors import GuestImageError
from backend.guest.tools import require_tool, run


@pytest.mark.parametrize(
    ("tool", "package"),
    [("cpio", "cpio"), ("qemu-system-x86_64", "qemu-system-x86"), ("dpkg-deb", "dpkg"),
     ("apt-get", "apt")],
)  # fmt: skip
def test_missing_tool_names_the_package(tmp_path: Path, tool: str, package: str) -> None:
    with pytest.raises(GuestImageError) as caught:
        require_tool(tool, search_path=str(tmp_path))
    assert str(caught.value) == f"{tool} not found: install it with `apt-get install {package}`"


def test_present_tool_is_found_by_absolute_path(tmp_path: Path) -> None:
    fake = tmp_path / "cpio"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert require_tool("cpio", search_path=str(tmp_path)) == str(fake)


async def test_run_refuses_a_command_string() -> None:
    with pytest.raises(TypeError):
        await run("echo a; echo b", what="x")  # a str is a Sequence[str]: refused at runtime


async def test_run_passes_arguments_verbatim_and_feeds_stdin() -> None:
    assert await run(["printf", "%s|", "a b", "$(x)", ";"], what="printf") == b"a b|$(x)|;|"
    assert await run(["cat"], stdin=b"in\0put", what="cat") == b"in\0put"


async def test_failure_is_one_line_with_step_and_stderr() -> None:
    with pytest.raises(GuestImageError) as caught:
        await run(["sh", "-c", "echo 'first\nsecond' >&2; exit 3"], what="downloading foo")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("downloading foo failed (exit 3)") and "second" in message
