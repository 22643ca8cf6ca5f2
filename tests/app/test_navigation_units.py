"""The command line's parsing and completion, the filter rules and ui.toml's keys and
aliases: pure functions, checked without an app."""

from __future__ import annotations

from pathlib import Path

import pytest

from boxui.tui.command_line import (
    VIEWS,
    Command,
    CommandError,
    complete,
    parse_command,
    register_view,
)
from boxui.tui.screens.sessions import parse_who
from boxui.tui.text_filter import TextFilter
from boxui.tui.ui_config import load_ui_file

ACTIONS = ["start", "stop", "delete", "help"]


@pytest.mark.parametrize(("typed", "kept", "dropped"), [
    ("web", ["web-1", "WEB-2"], ["db"]),
    ("!web", ["db"], ["web-1"]),
    ("~^db-\\d$", ["db-1"], ["db-10", "mydb-1"]),
    ("!~^db", ["web"], ["db-1"]),
    ("", ["anything"], []),
])
def test_filter_rules(typed: str, kept: list[str], dropped: list[str]) -> None:
    wanted = TextFilter.parse(typed)
    assert all(wanted.matches(text) for text in kept)
    assert not any(wanted.matches(text) for text in dropped)


def test_an_invalid_regex_keeps_everything_and_says_why() -> None:
    wanted = TextFilter.parse("~(unclosed")
    assert wanted.error is not None and "regular expression" in wanted.error
    assert wanted.matches("anything") and not wanted.active


def test_commands_views_verbs_filters_and_quit() -> None:
    assert parse_command(":services") == Command("view", "services")
    assert parse_command("machines /~^db") == Command("view", "machines", filter="~^db")
    assert parse_command("stop a b") == Command("machine", "stop", ("a", "b"))
    assert parse_command("rm old") == Command("machine", "delete", ("old",))
    assert parse_command("q").kind == "quit"
    with pytest.raises(CommandError, match="no such view or command"):
        parse_command("nonsense")
    with pytest.raises(CommandError, match="takes only a /filter"):
        parse_command("cells extra")


def test_aliases_expand_the_first_word_once() -> None:
    aliases = {"up": "start", "dbs": "machines /db", "loop": "loop"}
    assert parse_command("up web", aliases) == Command("machine", "start", ("web",))
    assert parse_command("dbs", aliases) == Command("view", "machines", filter="db")
    with pytest.raises(CommandError):
        parse_command("loop", aliases)


def test_the_view_table_is_a_registry_others_extend() -> None:
    register_view("timeline-test", "a view another module adds", "timeline")
    try:
        assert parse_command("timeline-test") == Command("view", "timeline-test")
        assert complete("timeline-t", {}, []) == "timeline-test"
    finally:
        del VIEWS["timeline-test"]


def test_completion_words_then_machine_names() -> None:
    assert complete("ser", {}, []) == "services"
    assert complete("st", {}, []) == "stop"  # the shortest first: start and stop tie on 5
    assert complete("start we", {}, ["db", "web-1", "web-2"]) == "start web-1"
    assert complete("d", {"dbs": "machines /db"}, []) == "dbs"
    assert complete("services", {}, []) is None and complete("", {}, []) is None


def write_ui(home: Path, text: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "ui.toml").write_text(text)


def test_ui_file_keys_and_aliases(tmp_path: Path) -> None:
    write_ui(tmp_path, 'theme = "boxui-nord"\n[keys]\nstart = "g, ctrl+g"\n'
                       '[aliases]\nup = "start"\n')
    ui, problems = load_ui_file(tmp_path, ACTIONS)
    assert problems == []
    assert ui.keys == {"start": "g,ctrl+g"} and ui.aliases == {"up": "start"}


@pytest.mark.parametrize(("text", "named"), [
    ('[keys]\nstrat = "g"\n', "keys.strat"),
    ('[keys]\nstart = "ctrl+"\n', "keys.start"),
    ('[keys]\nstop = "bogus"\n', "keys.stop"),
    ('[aliases]\n"Bad Alias" = "start"\n', "aliases"),
])
def test_ui_file_errors_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    write_ui(tmp_path, text)
    ui, problems = load_ui_file(tmp_path, ACTIONS)
    assert len(problems) == 1 and named in problems[0] and "ui.toml" in problems[0]
    assert ui.keys == {} and ui.aliases == {}


def test_a_bad_section_leaves_the_other(tmp_path: Path) -> None:
    write_ui(tmp_path, '[keys]\nstart = "nokey"\n[aliases]\nup = "start"\n')
    ui, problems = load_ui_file(tmp_path, ACTIONS)
    assert len(problems) == 1 and ui.aliases == {"up": "start"} and ui.keys == {}


def test_parse_who_gnu_and_busybox() -> None:
    gnu = "root     pts/0        2026-11-30 14:00 (10.0.2.2)\nalice    tty1  2026-11-30 13:00\n"
    assert parse_who(gnu) == [("root", "pts/0 (10.0.2.2)", "2026-11-30 14:00"),
                              ("alice", "tty1", "2026-11-30 13:00")]
    assert parse_who("\n") == []
