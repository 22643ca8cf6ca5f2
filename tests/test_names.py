from __future__ import annotations

import pytest

from backend.errors import InvalidNameError
from backend.state.names import validate_name

BAD_NAMES = ["../x", "a/b", "-rf", "", "x" * 300, "a\0b", "héllo", "..", ".", "A", "a_b",
             "a b", "x" * 64, "name\n"]


@pytest.mark.parametrize("name", ["a", "web-1", "0", "x" * 63, "a-", "9lives"])
def test_valid_names_pass(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_in_one_line(name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        validate_name(name)
    text = str(info.value)
    assert "\n" not in text
    assert "invalid machine name" in text
