"""The boxui terminal app: live machines, events, health and consoles, one key away.

The engine is injected as an `AppBackend` (embedded, or following a `boxui daemon` that
already supervises the state dir; the app never knows which), runs in the app's own loop
in the "backend" worker, and reaches the UI only through messages. Long work runs in the
"actions" worker group with `exit_on_error=False`; one handler turns any failure into a
notification, so no traceback ever reaches the screen and the app never freezes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import itertools
import os
import shlex
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import ClassVar, ParamSpec

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input, Static
from textual.worker import Worker, WorkerError, WorkerState, WorkType
from watchfiles import Change, awatch

from backend.errors import BoxuiError, SpecError
from backend.images.catalog import ImageListing
from backend.state.cell_projection import CELL_TYPE_PREFIX
from backend.state.event_bus import Missed
from backend.state.events import CloudEvent
from backend.state.lifecycle import InstanceState
from backend.state.machine_spec import MachineSpec
from backend.state.machine_store import LoadedMachine
from backend.state.port_forward_view import forward_views
from backend.state.state_dir import open_state_dir
from backend.supervision.boot_files import ProgressFn
from backend.supervision.file_copy import Progress as CopyProgress
from backend.supervision.health import HealthSample
from boxui.ssh_commands import ssh_exec_argv
from boxui.tui import tmux
from boxui.tui.backend import AppBackend
from boxui.tui.command_history import MAX_ENTRIES, load_history, save_history
from boxui.tui.command_line import (
    MACHINE_COMMANDS,
    VIEWS,
    CommandError,
    CommandLine,
    complete,
    parse_command,
)
from boxui.tui.fleet.fleet import Fleet
from boxui.tui.fleet.messages import (
    HostChanged,
    HostEventArrived,
    HostEventsLoaded,
    HostHealthSampled,
    HostsChanged,
)
from boxui.tui.fleet.snapshot import (
    LOCAL,
    host_key,
    split_host_filter,
    split_key,
    with_host_filter,
)
from boxui.tui.messages import (
    BackendStarted,
    EventArrived,
    EventsMissed,
    HealthSampled,
    SpecEditRejected,
    SpecReloaded,
    TimelineRequested,
    WorkProgressed,
)
from boxui.tui.screens.cells import CellsScreen
from boxui.tui.screens.confirm_bulk import ConfirmBulkScreen
from boxui.tui.screens.confirm_delete import ConfirmDeleteScreen
from boxui.tui.screens.copy_dialog import CopyScreen
from boxui.tui.screens.event_dialog import EventDialog
from boxui.tui.screens.help import HelpScreen, KeyGroup, grouped_keys
from boxui.tui.screens.hosts import HostsScreen
from boxui.tui.screens.images import ImagesScreen
from boxui.tui.screens.logs import LogsScreen
from boxui.tui.screens.new_machine import NewMachine, NewMachineScreen
from boxui.tui.screens.ports_dialog import PortsScreen
from boxui.tui.screens.services import ServicesScreen
from boxui.tui.screens.sessions import OpenSession, SessionsScreen
from boxui.tui.screens.timeline import TimelineScreen
from boxui.tui.text_filter import TextFilter
from boxui.tui.themes import (
    DEFAULT_THEME,
    ThemeCatalog,
    cycle,
    load_chosen_theme,
    save_chosen_theme,
    state_style,
    state_variable_defaults,
    sync_app_themes,
    user_themes_dir,
    watch_user_themes,
)
from boxui.tui.ui_config import load_ui_file
from boxui.tui.widgets.console_pane import ConsolePane
from boxui.tui.widgets.detail_pane import DetailPane
from boxui.tui.widgets.event_stream import EventStream
from boxui.tui.widgets.machine_table import MachineTable, row_cells
from boxui.tui.widgets.pool_line import PoolLine
from boxui.tui.widgets.status_header import StatusHeader, header_markup

#: the app's actions that act on every screen (`:`, `?`, quitting, the palette); the rest
#: act on the main screen's table, so a full-screen view in front of it turns them off
GLOBAL_ACTIONS = frozenset({"command_line", "help", "quit", "command_palette"})
ACTIVE = {"booting", "ready", "busy", "draining", "stopping", "unresponsive", "unhealthy"}
#: the row's label while a machine verb runs
LABELS = {"start": "starting", "stop": "stopping", "restart": "restarting",
          "delete": "deleting"}


P = ParamSpec("P")


def _while_shown(handler: Callable[P, None]) -> Callable[P, None]:
    """Backend facts (and the spinner's ticks) still arrive while the app closes, after
    the main screen's widgets are gone: drop them rather than fail the exit."""

    @functools.wraps(handler)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        with contextlib.suppress(NoMatches):
            handler(*args, **kwargs)

    return run


def empty_hint(images: list[ImageListing] | None, accel: str, reason: str) -> str:
    """The first screen's text: what to do, what there is to run, and how fast it runs."""
    if images is None:
        offered = "reading…"
    else:
        offered = ", ".join(
            f"{i.name}{'' if i.built or i.kind == 'default' else ' (not built yet)'}"
            for i in images) or "default"
    accel_line = (f"[b]{accel.upper()}[/b]: {_markup_escape(reason)}" if reason
                  else f"[b]{accel.upper()}[/b]")
    return "\n".join([
        "[b]No machines yet.[/b]",
        "",
        "  [b]n[/b]           create a machine: name, size, image, mounts, ports",
        f"  images      {_markup_escape(offered)}",
        "  [b]boxui demo[/b]  look around: sample machines act out every state",
        f"  machines    run under {accel_line}",
        "              ([b]boxui doctor[/b] checks the host)",
    ])


def _markup_escape(text: str) -> str:
    return text.replace("[", r"\[")


class BoxuiApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "boxui"
    #: every binding has an id (its action): `[keys]` in ui.toml rebinds by it
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "new_machine", "New", id="new_machine"),
        Binding("s", "start", "Start", id="start"),
        Binding("x", "stop", "Stop", id="stop"),
        Binding("r", "restart", "Restart", id="restart"),
        Binding("ctrl+d", "delete", "Delete", id="delete"),
        Binding("e", "edit", "Edit", id="edit"),
        Binding("S", "ssh", "SSH", id="ssh"),
        Binding("l", "logs", "Logs", id="logs"),
        Binding("v", "services", "Services", id="services"),
        Binding("C", "cells", "Cells", show=False, id="cells"),
        Binding("f", "ports", "Port forwards", show=False, id="ports"),
        Binding("c", "copy", "Copy files", show=False, id="copy"),
        Binding("T", "timeline", "Timeline", show=False, id="timeline"),
        Binding("u", "sessions", "Sessions", show=False, id="sessions"),
        Binding("H", "hosts", "Hosts", show=False, id="hosts"),
        Binding("space", "mark", "Mark", show=False, id="mark"),
        Binding("a", "toggle_events", "Events", show=False, id="toggle_events"),
        Binding("slash", "filter", "Filter", id="filter"),
        Binding("colon", "command_line", "Command", show=False, id="command_line"),
        Binding("o", "sort_next", "Sort", show=False, id="sort_next"),
        Binding("t", "next_theme", "Theme", id="next_theme"),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
        Binding("escape", "clear_filter", "Clear filter", show=False, id="clear_filter"),
    ]

    def __init__(self, backend: AppBackend, *,
                 clock: Callable[[], float] = time.time,
                 ssh_argv: Callable[[str], list[str]] | None = None,
                 editor: str | None = None, fleet: Fleet | None = None) -> None:
        super().__init__()
        self.backend: AppBackend = backend
        #: the other hosts in the registry (`hosts.toml`), each followed live
        self.fleet = fleet if fleet is not None else Fleet.from_registry(backend.home)
        self.clock = clock
        self._ssh_argv = ssh_argv or (lambda name: ssh_exec_argv(name, None, backend.home))
        self._editor = editor
        self._machines: dict[str, LoadedMachine] = {}
        self._last_valid: dict[str, MachineSpec] = {}
        self._health: dict[str, HealthSample] = {}
        self._busy: dict[str, str] = {}
        self._work: dict[str, str] = {}  # the latest progress message of long work
        self._frame = 0
        #: what `/` typed, per view, for the session ("machines", "events", "cells", ...)
        self.filters: dict[str, str] = {}
        self._filter_target = "machines"
        #: the SSH sessions `S` opened that are still open
        self.sessions: list[OpenSession] = []
        self._mounted = False
        self._images: list[ImageListing] | None = None  # None: not read yet
        #: machines asked for whose OS image is built first: shown before they exist
        self._pending: dict[str, LoadedMachine] = {}
        self.actions_done: list[tuple[str, str]] = []
        self._history_lock = asyncio.Lock()
        self._history_failed = False
        self.suspended_events: list[str] = []
        self._home = backend.home
        self._catalog = ThemeCatalog(user_themes_dir(self._home))
        self._theme_names: list[str] = []
        self._theme_problems = self._load_themes()
        chosen = load_chosen_theme(self._home)
        self.theme = chosen if chosen in self._theme_names else DEFAULT_THEME
        self._ui, self._ui_problems = load_ui_file(
            self._home, [b.id for b in self.BINDINGS if isinstance(b, Binding) and b.id])

    # --- themes ----------------------------------------------------------------------

    def _load_themes(self) -> list[str]:
        """(Re)register the catalog; returns one message per theme file that was skipped."""
        themes, problems = self._catalog.load()
        sync_app_themes(self, themes, self._theme_names)
        self._theme_names = sorted(themes)
        return problems

    def get_theme_variable_defaults(self) -> dict[str, str]:
        # TCSS uses $state-*; Textual's own themes (palette) do not define them
        return state_variable_defaults()

    @work(group="themes", exit_on_error=False)
    async def _watch_themes(self) -> None:
        changed = asyncio.Event()
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_user_themes(
            self._catalog.user_dir, changed.set, stop))
        try:
            while True:
                await changed.wait()
                changed.clear()
                themes, problems = await asyncio.to_thread(self._catalog.load)
                sync_app_themes(self, themes, self._theme_names)
                self._theme_names = sorted(themes)
                self._report_theme_problems(problems)
        finally:
            stop.set()
            watcher.cancel()

    def _report_theme_problems(self, problems: list[str]) -> None:
        for problem in problems:
            self.notify(problem, title="theme skipped", severity="warning", timeout=10)

    # --- layout ----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusHeader("boxui: starting…")
        yield PoolLine(self.backend.home, id="pools")
        yield Input(placeholder="filter by name or state", id="filter", disabled=True)
        with Horizontal(id="body"):
            with Vertical(id="left"):
                yield Static(id="empty-hint")
                yield MachineTable(self.state_colour, row_source=self._row_of, id="machines")
                with Horizontal(id="bottom"):
                    yield EventStream(id="events")
                    yield ConsolePane(id="console")
            yield DetailPane(id="detail")
        yield CommandLine(self._complete, history=load_history(self._home),
                          limit=MAX_ENTRIES, id="command")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(MachineTable).border_title = "machines"
        self.query_one(EventStream).border_title = "events: all machines"
        self.query_one(ConsolePane).border_title = "console"
        self.query_one(DetailPane).border_title = "details"
        self._spinner = self.set_interval(0.12, self._spin, pause=True)
        self._mounted = True
        self.query_one(MachineTable).focus()
        self._report_theme_problems(self._theme_problems)
        for problem in self._ui_problems:
            self.notify(problem, title="ui.toml", severity="error", timeout=15)
        if self._ui.keys:
            self.set_keymap(dict(self._ui.keys))
        self.run_worker(self.backend.run(), name="backend", group="backend",
                        exit_on_error=False)
        self.query_one(MachineTable).show_hosts(bool(self.fleet.hosts))
        self.run_worker(self.fleet.run(self.post_message), name="hosts", group="fleet",
                        exit_on_error=False)
        if self.fleet.problem:
            self.notify(self.fleet.problem, title="hosts.toml", severity="error", timeout=15)
        self.run_worker(self._wait_for_backend(), group="backend", exit_on_error=False)

    async def _wait_for_backend(self) -> None:
        await self.backend.ready.wait()
        self.post_message(BackendStarted())

    def state_colour(self, state: str) -> str:
        return state_style(self.current_theme, state)

    # --- backend facts ---------------------------------------------------------------

    def on_backend_started(self, _: BackendStarted) -> None:
        for note in self.backend.startup_notes:
            self.notify(note, severity="warning", timeout=10)
        for machine in self.backend.machines():
            self._remember(machine)
        events = self.query_one(EventStream)
        for event in self.backend.recent_events(100):
            events.add(event, self.state_colour(str(event.data.get("to") or "")))
        self._reconcile()
        self._consume_events()
        self._consume_health()
        self._watch_specs()
        self._selection_changed()
        self._watch_themes()
        self._load_images()
        # everything loaded so far lives as long as the app: keep it out of the cyclic
        # GC's full passes, which otherwise stall a frame now and then with 1,000 machines
        gc.collect()
        gc.freeze()

    @work(group="feeds", exit_on_error=False)
    async def _consume_events(self) -> None:
        subscription = self.backend.subscribe_events()
        async for item in subscription:
            if isinstance(item, Missed):
                self.post_message(EventsMissed(item.count))
            else:
                self.post_message(EventArrived(item))

    @work(group="feeds", exit_on_error=False)
    async def _consume_health(self) -> None:
        subscription = self.backend.subscribe_health()
        while True:
            first = await subscription.get()
            batch = [first]
            while (more := subscription.get_nowait()) is not None:
                batch.append(more)
            self.post_message(HealthSampled(batch))

    @work(group="feeds", exit_on_error=False)
    async def _watch_specs(self) -> None:
        machines_dir = self.backend.machines_dir()
        async for changes in awatch(machines_dir, debounce=200, step=50):
            for change, path in changes:
                if change is Change.deleted or not path.endswith("/machine.toml"):
                    continue
                name = os.path.basename(os.path.dirname(path))
                if name not in self._machines:
                    continue
                try:
                    spec = await asyncio.to_thread(self.backend.load_spec, name)
                except SpecError as exc:
                    self.post_message(SpecEditRejected(name, str(exc)))
                except BoxuiError:
                    continue
                else:
                    if spec != self._last_valid.get(name):
                        self.post_message(SpecReloaded(name))

    @_while_shown
    def on_event_arrived(self, message: EventArrived) -> None:
        event = message.event
        name = event.subject or ""
        self.query_one(EventStream).add(event, self.state_colour(str(event.data.get("to"))))
        if isinstance(self.screen, ServicesScreen):
            self.screen.reload()
        if isinstance(self.screen, CellsScreen) and event.type.startswith(CELL_TYPE_PREFIX):
            self.screen.reload()
        if event.type.endswith(".deleted"):
            self._machines.pop(name, None)
            self._health.pop(name, None)
            self.query_one(MachineTable).marked.discard(name)
        else:
            try:
                self._remember(self.backend.machine(name))
            except BoxuiError:
                self._machines.pop(name, None)
        self._machine_changed(name)
        if name == self.selected:
            self._show_detail()
            if self.query_one(ConsolePane).path is None and name in self._machines:
                self._selection_changed()  # it was shown before it existed: follow it now

    @_while_shown
    def on_events_missed(self, message: EventsMissed) -> None:
        self.query_one(EventStream).note(f"{message.count} events not shown (UI fell behind)")
        # the table must not stay behind too: read every machine again
        fresh = {machine.name: machine for machine in self.backend.machines()}
        for name in [n for n in self._machines if n not in fresh]:
            del self._machines[name]
        for machine in fresh.values():
            self._remember(machine)
        self._reconcile()

    # --- other hosts: their followers' facts (boxui/tui/fleet) -------------------------

    @_while_shown
    def on_host_changed(self, message: HostChanged) -> None:
        self._reconcile()
        if isinstance(self.screen, HostsScreen):
            self.screen.reload()
        if self.fleet.owns(self.selected):
            self._show_detail()

    @_while_shown
    def on_hosts_changed(self, message: HostsChanged) -> None:
        """Hosts added or removed while the app runs (`boxui host add|rm`)."""
        if message.problem:
            self.notify(message.problem, title="hosts.toml", severity="error", timeout=15)
            return
        self.query_one(MachineTable).show_hosts(bool(self.fleet.hosts))
        self._reconcile()
        if isinstance(self.screen, HostsScreen):
            self.screen.reload()
        self._show_detail()

    @_while_shown
    def on_host_events_loaded(self, message: HostEventsLoaded) -> None:
        for event in message.events:  # as the local past is, when the app opens
            self._show_host_event(message.host, event)

    def _show_host_event(self, host: str, event: CloudEvent) -> None:
        if event.subject:  # tagged with its host: the pane shows it, `a` filters by it
            event = event.model_copy(update={"subject": host_key(event.subject, host)})
        self.query_one(EventStream).add(event, self.state_colour(str(event.data.get("to"))))

    @_while_shown
    def on_host_event_arrived(self, message: HostEventArrived) -> None:
        subject = message.event.subject
        if message.new:  # else it came with the host's past, shown already
            self._show_host_event(message.host, message.event)
        if not subject:
            self._reconcile()
            return
        key = host_key(subject, message.host)
        self._remote_changed(key)
        if key == self.selected:
            self._show_detail()

    def _remote_changed(self, key: str) -> None:
        """As `_machine_changed`, for a remote row: its own row, unless the rows shown
        change (with 5,000 remote rows a reconcile per event builds them all)."""
        host, typed = split_host_filter(self.filters.get("machines", ""))
        name, where = split_key(key)
        row = self.fleet.row_for(key, self.clock(), self._busy, self._frame)
        shown = row is not None and host in (None, where) and \
            TextFilter.parse(typed).matches(name, row[1], where)
        table = self.query_one(MachineTable)
        if shown != table.has_row(key):
            self._reconcile()
            return
        if row is not None and shown:
            table.update([(key, *row)])
        self._update_header()

    @_while_shown
    def on_host_health_sampled(self, message: HostHealthSampled) -> None:
        # as local samples: only the rows on screen are built now, the rest when drawn
        table = self.query_one(MachineTable)
        keys = [host_key(name, message.host) for name in message.names]
        table.update(self._rows_by_key(table.changed(keys)))
        if self.selected in keys:
            self._show_detail()

    @_while_shown
    def on_health_sampled(self, message: HealthSampled) -> None:
        for sample in message.samples:
            self._health[sample.machine] = sample
        # a sample changes only its own row, and only the rows on screen are built now
        table = self.query_one(MachineTable)
        shown = table.changed([s.machine for s in message.samples if s.machine in self._machines])
        table.update(self._rows(self._machines[name] for name in shown))
        if self.selected in {s.machine for s in message.samples}:
            self._show_detail()

    @_while_shown
    def on_spec_reloaded(self, message: SpecReloaded) -> None:
        try:
            self._remember(self.backend.machine(message.name))
        except BoxuiError:
            return
        self.notify(f"reloaded {message.name}/machine.toml", timeout=3)
        self._reconcile()
        if message.name == self.selected:
            self._show_detail()

    def on_spec_edit_rejected(self, message: SpecEditRejected) -> None:
        self.notify(f"{message.reason} (keeping the last valid spec)",
                    title="invalid machine.toml", severity="error", timeout=10)

    def _remember(self, machine: LoadedMachine) -> None:
        """Keep the last valid spec: an invalid hand edit must not blank a live machine."""
        if machine.spec is not None and not machine.broken:
            self._last_valid[machine.name] = machine.spec
        elif machine.broken and machine.name in self._last_valid and machine.record:
            machine = machine.model_copy(update={
                "spec": self._last_valid[machine.name], "state": machine.record.state,
            })
        self._machines[machine.name] = machine

    # --- drawing ---------------------------------------------------------------------

    def _visible(self) -> Iterable[LoadedMachine]:
        host, typed = split_host_filter(self.filters.get("machines", ""))
        if host not in (None, LOCAL):
            return
        wanted = TextFilter.parse(typed)
        pending = (m for n, m in self._pending.items() if n not in self._machines)
        for machine in itertools.chain(self._machines.values(), pending):
            if wanted.matches(machine.name, machine.state.value, LOCAL if self.fleet.hosts
                              else ""):
                yield machine

    def _rows(self, machines: Iterable[LoadedMachine]) -> Iterable[tuple[str, dict[str, str],
                                                                         str]]:
        now = self.clock()
        for m in machines:
            yield (m.name, row_cells(m, self._health.get(m.name), now, self._busy.get(m.name),
                                     self._frame), m.state.value)

    def _row_of(self, name: str) -> tuple[dict[str, str], str] | None:
        """A row as it is now, for the table to draw one that changed off screen (a
        `NAME@HOST` key is a remote machine's: its host's snapshot has it)."""
        if self.fleet.owns(name):
            return self.fleet.row_for(name, self.clock(), self._busy, self._frame)
        machine = self._machines.get(name) or self._pending.get(name)
        if machine is None:
            return None
        _, cells, state = next(iter(self._rows([machine])))
        return cells, state

    def _rows_by_key(self, keys: Iterable[str]) -> Iterable[tuple[str, dict[str, str], str]]:
        for key in keys:
            if (row := self._row_of(key)) is not None:
                yield key, *row

    def _reconcile(self) -> None:
        host, typed = split_host_filter(self.filters.get("machines", ""))
        remote = self.fleet.rows(self.clock(), self._busy, self._frame, host,
                                 TextFilter.parse(typed))
        self.query_one(MachineTable).reconcile(itertools.chain(self._rows(self._visible()),
                                                               remote))
        self._update_header()
        self._update_empty_hint()

    @work(group="images", exclusive=True, exit_on_error=False)
    async def _load_images(self) -> None:
        try:
            self._images = await self.backend.images()
        except (BoxuiError, OSError):
            self._images = []
        self._update_empty_hint()

    @_while_shown
    def _update_empty_hint(self) -> None:
        """No machines at all: say what to do instead of showing an empty table."""
        hint = self.query_one("#empty-hint", Static)
        empty = (not self._machines and not self._pending and self.backend.ready.is_set()
                 and not any(s.machines for s in self.fleet.snapshots()))
        hint.set_class(empty, "-shown")
        if empty:
            accel = self.backend.accel()
            hint.update(empty_hint(self._images, accel.accel, accel.reason))

    def _update_header(self) -> None:
        accel = self.backend.accel()
        local = (m.state.value for m in self._machines.values())
        self.query_one(StatusHeader).show(header_markup(
            itertools.chain(local, self.fleet.states()), accel.accel, accel.reason,
            self.state_colour, hosts=1 + len(self.fleet.followers)))

    @_while_shown
    def _spin(self) -> None:
        self._frame += 1
        if not self._busy:
            self._spinner.pause()
        self._update_rows(self._busy)

    def _machine_changed(self, name: str) -> None:
        """After one machine's event: a full reconcile only if the rows shown change (it
        came, went, or the filter now keeps or drops it), else its own row. A burst of
        events (a bulk start of hundreds) rebuilt every row once per event."""
        machine = self._machines.get(name) or self._pending.get(name)
        wanted = TextFilter.parse(self.filters.get("machines", ""))
        shown = machine is not None and wanted.matches(machine.name, machine.state.value)
        if shown != self.query_one(MachineTable).has_row(name):
            self._reconcile()
            return
        self._update_rows([name])
        self._update_header()
        self._update_empty_hint()

    def _update_rows(self, names: Iterable[str]) -> None:
        """Redraw only these machines' rows (those the table shows): a spinner's tick or
        a progress step changes one row, not which rows there are; a full reconcile
        would build all 1,000 rows eight times a second while anything is busy."""
        table = self.query_one(MachineTable)
        table.update(self._rows_by_key([n for n in names if table.has_row(n)]))

    @property
    def selected(self) -> str | None:
        return self.query_one(MachineTable).selected_name

    @on(MachineTable.Highlighted)
    def _selection_changed(self) -> None:
        self._show_detail()
        name = self.selected
        events = self.query_one(EventStream)
        if events.only is not None:
            events.focus_on(name)
        pane = self.query_one(ConsolePane)
        if name is not None and name in self._machines:
            # the method, not a coroutine: an exclusive worker cancelled before it starts
            # (the selection moved on at once) then leaves no coroutine never awaited
            follow: WorkType[None] = functools.partial(pane.follow,
                                                      self.backend.console_log(name))
            self.run_worker(follow, group="console", exclusive=True, exit_on_error=False)
        elif pane.path is not None:  # none, or one still waiting to exist (no dir yet)
            self.workers.cancel_group(self, "console")
            pane.path = None
            pane.clear()
            pane.border_title = "console"

    def _show_detail(self) -> None:
        name = self.selected
        machine = self._machines.get(name) if name else None
        history = self.backend.health_history if machine else None
        if machine is None and self.fleet.owns(name):
            machine, history = self.fleet.detail(str(name))
        # `unknown` (a host that does not answer) has no theme colour: plain text
        colour = (self.state_colour(machine.state.value) or "default") if machine else ""
        self.query_one(DetailPane).show(machine, history, colour,
                                        self._work.get(name) if name else None)

    @_while_shown
    def on_work_progressed(self, message: WorkProgressed) -> None:
        if message.name not in self._busy:
            return  # the work already ended
        self._busy[message.name] = message.phase
        self._work[message.name] = f"{message.phase}: {message.message}"
        self._update_rows([message.name])
        if message.name == self.selected:
            self._show_detail()

    # --- errors ----------------------------------------------------------------------

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one error handler: any failed worker becomes a notification."""
        if event.state is not WorkerState.ERROR:
            return
        error = event.worker.error
        text = str(error) if isinstance(error, BoxuiError) else \
            f"{type(error).__name__}: {error}"
        if event.worker.group == "backend":
            self.notify(f"the engine stopped: {text}", severity="error", timeout=30)
        else:
            self.notify(text, title=event.worker.name or "error", severity="error", timeout=8)

    # --- actions ---------------------------------------------------------------------

    def _need_selection(self, remote_ok: bool = False) -> str | None:
        name = self.selected
        if name is None:
            self.notify("no machine selected", severity="warning", timeout=3)
        elif not remote_ok and self.fleet.owns(name):
            self.notify(f"{name}: on another host, this is not offered here (start, stop, "
                        "restart, delete and S are)", severity="warning", timeout=5)
            return None
        return name

    def _long(self, name: str, label: str,
              job: Callable[[ProgressFn], Awaitable[None]]) -> None:
        """Run `job` in the actions group with a spinner in the row; `job` gets a
        progress callback whose phases replace the label as the work goes on."""
        def progress(phase: str, message: str) -> None:
            self.post_message(WorkProgressed(name, phase, message))  # thread-safe

        async def run() -> None:
            self._busy[name] = label
            self._spinner.resume()
            try:
                await job(progress)
                self.actions_done.append((label, name))
            finally:
                self._busy.pop(name, None)
                self._work.pop(name, None)
                self._reconcile()
                if name == self.selected:
                    self._show_detail()

        self.run_worker(run(), name=f"{label} {name}", group="actions", exit_on_error=False)

    def action_new_machine(self) -> None:
        def created(request: NewMachine | None) -> None:
            if request is not None:
                self._long(request.spec.name, "creating",
                           lambda p: self._create(request, p))

        self.push_screen(NewMachineScreen({*self._machines, *self._pending}, self.backend.home,
                                          self.backend.images), created)

    async def _create(self, request: NewMachine, progress: ProgressFn) -> None:
        """An OS image not built yet is built first, its steps shown in the row."""
        if request.build_image is not None:
            name = request.spec.name
            self._pending[name] = LoadedMachine(
                name=name, spec=request.spec, state=InstanceState.CREATING,
                reason=f"its image {request.build_image} is built first")
            self._reconcile()
            try:
                await self.backend.build_image(request.build_image, progress)
            finally:
                self._pending.pop(name, None)
            self._load_images()
        await self.backend.create(request.spec, progress=progress, mounts=request.mounts,
                                  ports=request.ports)

    # --- machine verbs: the keys, `:start NAME`, and marked rows -----------------------

    def _targets(self) -> tuple[list[str], bool] | None:
        """The marked machines (True: from marks), else the selected one."""
        marked = self.query_one(MachineTable).marked_names
        if marked:
            return marked, True
        name = self._need_selection(remote_ok=True)
        return ([name], False) if name is not None else None

    def _verb(self, verb: str) -> None:
        targets = self._targets()
        if targets is not None:
            self.act(verb, *targets)

    def action_start(self) -> None:
        self._verb("start")

    def action_stop(self) -> None:
        self._verb("stop")

    def action_restart(self) -> None:
        self._verb("restart")

    def action_delete(self) -> None:
        self._verb("delete")

    def act(self, verb: str, names: list[str], confirm: bool) -> None:
        """`verb` on every machine in `names`, each with its spinner and progress in its
        row; several (or marked) ones after one confirmation that names them all."""
        if not confirm and len(names) == 1:
            if verb == "delete":
                self._confirm_delete(names[0])
            else:
                self._run_verb(verb, names[0])
            return
        running = {n for n in names if n in self._machines
                   and self._machines[n].state.value in ACTIVE}

        def confirmed(yes: bool | None) -> None:
            if yes:
                for name in names:
                    self._run_verb(verb, name)
                self.query_one(MachineTable).clear_marks()

        self.push_screen(ConfirmBulkScreen(verb, names, running), confirmed)

    def _run_verb(self, verb: str, name: str) -> None:
        if self.fleet.owns(name):  # a remote row: its host acts
            self._long(name, LABELS[verb], lambda _p: self.fleet.act(verb, name))
            return
        jobs: dict[str, Callable[[ProgressFn], Awaitable[None]]] = {
            "start": lambda p: self.backend.start(name, progress=p),
            "stop": lambda _p: self.backend.stop(name),
            "restart": lambda p: self.backend.restart(name, progress=p),
            "delete": lambda _p: self.backend.delete(name),
        }
        self._long(name, LABELS[verb], jobs[verb])

    def _confirm_delete(self, name: str) -> None:
        running = self._machines[name].state.value in ACTIVE if name in self._machines else False
        try:
            disk = self.backend.disk_usage(name)
        except (BoxuiError, OSError):
            disk = None

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._run_verb("delete", name)

        self.push_screen(ConfirmDeleteScreen(name, running, disk), confirmed)

    def action_mark(self) -> None:
        name = self.selected
        if name is not None:
            table = self.query_one(MachineTable)
            table.toggle_mark(name)
            table.action_cursor(1)
            self._update_marks_title()

    def _update_marks_title(self) -> None:
        marked = len(self.query_one(MachineTable).marked_names)
        table = self.query_one(MachineTable)
        marks = f" ({marked} marked)" if marked else ""
        wanted = TextFilter.parse(self.filters.get("machines", "")).describe()
        table.border_title = f"machines {wanted}".rstrip() + marks

    async def action_edit(self) -> None:
        name = self._need_selection()
        if name is None:
            return
        editor = self._editor or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        argv = [*shlex.split(editor), str(self.backend.spec_path(name))]
        await self._run_suspended(argv, f"edit {name}")

    async def action_ssh(self) -> None:
        name = self._need_selection(remote_ok=True)
        if name is not None:
            await self.ssh(name)

    async def ssh(self, name: str, onto_host: bool = False) -> None:
        """Inside tmux, a new window, so the app stays on screen; elsewhere the app
        steps aside until the shell ends, as it always did."""
        try:
            argv = (self.fleet.session_argv(name) if self.fleet.owns(name) or onto_host
                    else self._ssh_argv(name))
        except BoxuiError as exc:
            self.notify(str(exc), severity="error")
            return
        if tmux.inside_tmux():
            await self._ssh_in_tmux(name, argv)
            return
        session = OpenSession(name, "suspended app", datetime.now())
        self.sessions.append(session)
        try:
            await self._run_suspended(argv, f"ssh {name}")
        finally:
            self.sessions.remove(session)

    async def _ssh_in_tmux(self, name: str, argv: list[str]) -> None:
        try:
            session = await tmux.open_window(name, argv)
        except BoxuiError as exc:
            self.notify(str(exc), severity="error")
            return
        self.sessions.append(session)
        self.actions_done.append((f"ssh {name}", session.where))
        self.notify(f"ssh {name}: {session.where}", timeout=3)

        async def forget() -> None:
            await tmux.wait_closed(session)
            if session in self.sessions:
                self.sessions.remove(session)

        self.run_worker(forget(), group="sessions", exit_on_error=False)

    async def _run_suspended(self, argv: list[str], what: str) -> None:
        """Hand the terminal to a program while the backend keeps running: the child is
        awaited, not waited for, so the event loop (and supervision) goes on."""
        try:
            with self.suspend():
                proc = await asyncio.create_subprocess_exec(*argv)
                code = await proc.wait()
        except FileNotFoundError:
            self.notify(f"{argv[0]} not found", severity="error")
            return
        except Exception as exc:
            self.notify(f"{what}: {exc}", severity="error")
            return
        self.actions_done.append((what, str(code)))
        if code not in (0, None):
            self.notify(f"{what} exited with {code}", severity="warning", timeout=4)

    def action_logs(self) -> None:
        if (name := self._need_selection()) is not None:
            self.logs(name)

    def logs(self, name: str) -> None:
        self.push_screen(LogsScreen(self.backend.console_log(name), self.filters))

    def action_services(self) -> None:
        self.push_screen(ServicesScreen(self.backend.services, self.state_colour,
                                        self.filters))

    def on_event_stream_opened(self, message: EventStream.Opened) -> None:
        self.push_screen(EventDialog(message.event))

    def action_cells(self) -> None:
        self.push_screen(CellsScreen(open_state_dir(self.backend.home).event_log,
                                     self.filters))

    def action_images(self) -> None:
        self.push_screen(ImagesScreen(self.backend.images, self.filters))

    def action_sessions(self) -> None:
        running = [n for n, m in self._machines.items() if m.state.value in ACTIVE]

        async def who(name: str) -> str:
            output = await self.backend.exec(name, ["who"], timeout=10)
            return output.stdout.decode(errors="replace")

        self.push_screen(SessionsScreen(lambda: list(self.sessions), running, who,
                                        self.filters))

    def action_hosts(self) -> None:
        """The hosts view; `enter` on a host shows only its machines."""
        def choose(host: str | None) -> None:
            typed = with_host_filter(self.filters.get("machines", ""), host)
            self.set_filter("machines", typed)

        async def session(host: str) -> None:
            await self.ssh(host, onto_host=True)

        self.push_screen(HostsScreen(self.fleet.snapshots, len(self._machines), choose,
                                     lambda host: self.run_worker(session(host)),
                                     self.filters))

    def action_ports(self) -> None:
        if (name := self._need_selection()) is not None:
            self.ports(name)

    def ports(self, name: str) -> None:
        def after(_: None) -> None:
            self._refresh_machine(name)

        self.push_screen(PortsScreen(
            name, lambda: forward_views(self.backend.machine(name)),
            lambda mapping: self.backend.add_port(name, mapping),
            lambda guest, protocol: self.backend.remove_port(name, guest, protocol)), after)

    def _refresh_machine(self, name: str) -> None:
        try:
            self._remember(self.backend.machine(name))
        except BoxuiError:
            return
        if name == self.selected:
            self._show_detail()

    def action_copy(self) -> None:
        if (name := self._need_selection()) is not None:
            self.copy_files(name)

    def copy_files(self, name: str) -> None:
        async def copy(source: str, target: str, recursive: bool,
                       progress: CopyProgress) -> None:
            await self.backend.copy(name, source, target, recursive=recursive,
                                    progress=progress)

        self.push_screen(CopyScreen(name, copy))

    def action_timeline(self) -> None:
        if (name := self._need_selection()) is not None:
            self.post_message(TimelineRequested(machine=name))

    def on_timeline_requested(self, message: TimelineRequested) -> None:
        self.push_screen(TimelineScreen(self.backend, self.state_colour, clock=self.clock,
                                        machine=message.machine, service=message.service))

    def action_toggle_events(self) -> None:
        events = self.query_one(EventStream)
        events.focus_on(None if events.only is not None else self.selected)

    # --- `/` filters: the machines, or the focused events or console pane ------------

    def _focused_view(self) -> str:
        focused: Widget | None = self.focused
        if isinstance(focused, EventStream):
            return "events"
        if isinstance(focused, ConsolePane):
            return "console"
        return "machines"

    def action_filter(self) -> None:
        self._filter_target = self._focused_view()
        field = self.query_one("#filter", Input)
        field.placeholder = (f"filter the {self._filter_target}: text, !text (not), ~regex"
                             f"{' (name or state)' if self._filter_target == 'machines' else ''}")
        field.value = self.filters.get(self._filter_target, "")
        field.disabled = False
        field.add_class("-shown")
        field.focus()

    def action_clear_filter(self) -> None:
        field = self.query_one("#filter", Input)
        command = self.query_one(CommandLine)
        if command.has_class("-shown"):
            self._close_command_line()
        elif field.has_class("-shown"):
            field.value = ""
            field.remove_class("-shown")
            field.disabled = True
            self._back_to(self._filter_target)
        elif self.query_one(MachineTable).marked:  # hidden ones too
            self.query_one(MachineTable).clear_marks()
            self._update_marks_title()

    def _back_to(self, view: str) -> None:
        widget: Widget = (self.query_one(EventStream) if view == "events" else
                          self.query_one(ConsolePane) if view == "console" else
                          self.query_one(MachineTable))
        widget.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.set_filter(self._filter_target, event.value)
        event.input.set_class(TextFilter.parse(event.value).error is not None, "-invalid")

    def set_filter(self, view: str, typed: str) -> None:
        """Remember `typed` for `view` and apply it where the view is on screen."""
        self.filters[view] = typed
        if view == "events":
            self.query_one(EventStream).set_filter(typed)
        elif view == "console":
            self.query_one(ConsolePane).set_filter(typed)
        elif view == "machines":
            self._reconcile()
            self._update_marks_title()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self._back_to(self._filter_target)

    # --- `:` the command line ---------------------------------------------------------

    async def action_command_line(self) -> None:
        while len(self.screen_stack) > 1:  # as in k9s, `:` works from any view
            await self.pop_screen()
        line = self.query_one(CommandLine)
        line.add_class("-shown")
        line.disabled = False
        line.focus()

    def _close_command_line(self) -> None:
        line = self.query_one(CommandLine)
        line.value = ""
        line.rewind()
        line.remove_class("-shown")
        line.disabled = True
        self.query_one(MachineTable).focus()

    @work(group="history", exit_on_error=False)
    async def _save_history(self, entries: list[str]) -> None:
        """In order (the lock is fair), off the event loop; a failure is said once."""
        async with self._history_lock:
            try:
                await asyncio.to_thread(save_history, self._home, entries)
            except BoxuiError as exc:
                if not self._history_failed:
                    self.notify(f"command history not saved: {exc}", severity="warning",
                                timeout=8)
                self._history_failed = True

    def _complete(self, text: str) -> str | None:
        return complete(text, self._ui.aliases, [*self._machines, *self.fleet.keys()])

    @on(CommandLine.Run)
    async def _run_command(self, message: CommandLine.Run) -> None:
        self._close_command_line()
        saving = self._save_history(list(self.query_one(CommandLine).history))
        try:
            command = parse_command(message.text, self._ui.aliases)
        except CommandError as exc:
            self.notify(str(exc), severity="error", timeout=6)
            return
        self.actions_done.append(("command", message.text))
        if command.kind == "quit":
            with contextlib.suppress(WorkerError):  # a failure was reported already
                await saving.wait()  # the app's end would cancel it
            await self.action_quit()
        elif command.kind == "view":
            await self._open_view(command.word, command.filter)
        else:
            await self._machine_command(command.word, list(command.args))

    async def _open_view(self, view: str, typed: str | None) -> None:
        if typed is not None:
            self.filters[view] = typed
        if view == "machines":
            if typed is not None:
                self.set_filter("machines", typed)
            self.query_one(MachineTable).focus()
            return
        if view == "events":
            events = self.query_one(EventStream)
            events.focus_on(None)
            if typed is not None:
                self.set_filter("events", typed)
            events.focus()
            return
        await self.run_action(VIEWS[view].action)

    async def _machine_command(self, verb: str, names: list[str]) -> None:
        unknown = [n for n in names if n not in self._machines and not self.fleet.owns(n)]
        if unknown:
            self.notify(f"no machine named {', '.join(unknown)}", severity="error", timeout=6)
            return
        remote = [n for n in names if self.fleet.owns(n)]
        if remote and verb not in (*LABELS, "ssh", "mark"):
            self.notify(f":{verb} is not offered for machines on other hosts "
                        f"({', '.join(remote)})", severity="error", timeout=6)
            return
        if not names:
            targets = self._targets()
            if targets is None:
                return
            names, marked = targets
        else:
            marked = False
        if verb in LABELS:
            self.act(verb, names, confirm=marked or len(names) > 1)
        elif verb == "mark":
            for name in names:
                self.query_one(MachineTable).toggle_mark(name)
            self._update_marks_title()
        elif len(names) != 1:
            self.notify(f":{verb} takes one machine", severity="error", timeout=6)
        elif verb == "ssh":
            await self.ssh(names[0])
        else:
            {"logs": self.logs, "ports": self.ports, "copy": self.copy_files}[verb](names[0])

    def action_sort_next(self) -> None:
        table = self.query_one(MachineTable)
        keys = [c.key for c in table.columns]
        table.sort_by(keys[(keys.index(table.sort_column) + 1) % len(keys)])

    def action_next_theme(self) -> None:
        self.theme = cycle(self._theme_names, self.theme)

    def watch_theme(self, theme: str) -> None:
        if self._mounted:
            self.query_one(MachineTable).restyle()
            self._reconcile()
            self._show_detail()
            self.notify(f"theme: {theme}", timeout=2)
            self._remember_theme(theme)

    @work(group="themes", exit_on_error=False)
    async def _remember_theme(self, theme: str) -> None:
        await asyncio.to_thread(save_chosen_theme, self._home, theme)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.key_groups(), [
            *((v.name, v.summary) for v in VIEWS.values()),
            *((f"{word} NAME…", what) for word, (_, what) in MACHINE_COMMANDS.items()),
            *((f"{alias}", f"= :{target} (ui.toml)") for alias, target
              in self._ui.aliases.items()),
        ]))

    def key_groups(self) -> list[KeyGroup]:
        """The keys that act on the screen in front now, grouped (see `help`)."""
        return grouped_keys(self.screen, [b.action for b in self.BINDINGS
                                          if isinstance(b, Binding)], GLOBAL_ACTIONS)

    def keys_in_force(self) -> list[tuple[str, str]]:
        return [pair for group in self.key_groups() for pair in group.keys]

    def _in_a_view(self) -> bool:
        """A full-screen view (not a dialog) is in front of the main screen."""
        return any(not screen.is_modal for screen in self.screen_stack[1:])

    @functools.cached_property
    def _main_only(self) -> frozenset[str]:
        return frozenset(b.action for b in self.BINDINGS if isinstance(b, Binding)) \
            - GLOBAL_ACTIONS

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """A view owns its keys: `s` in the timeline must not stop the machine selected
        in the table behind it. Dialogs need no such rule (Textual stops app bindings
        at a modal screen) and keep the main screen's footer as it was."""
        return not (action in self._main_only and self._in_a_view())

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if self._in_a_view():  # as the keys: a view in front owns them
            yield SystemCommand("Command line", ":machines, :start NAME, ...",
                                self.action_command_line)
            yield SystemCommand("Keys", "The keys that act here", self.action_help)
            return
        for title, help_text, action in (
            ("New machine", "Create and start a machine", self.action_new_machine),
            ("Start machine", "Start the selected machine", self.action_start),
            ("Stop machine", "Power off the selected machine", self.action_stop),
            ("Restart machine", "Restart the selected machine", self.action_restart),
            ("Delete machine", "Delete the selected machine", self.action_delete),
            ("Edit machine.toml", "Open the spec in $EDITOR", self.action_edit),
            ("SSH into machine", "Interactive shell in the selected machine", self.action_ssh),
            ("Console log", "Full-screen serial console", self.action_logs),
            ("Services", "Services with their instances", self.action_services),
            ("Cells", "Commands run in throwaway machines (boxui run)", self.action_cells),
            ("Images", "OS images and recipes", self.action_images),
            ("Sessions", "Open SSH sessions and logged-in users", self.action_sessions),
            ("Hosts", "Other hosts; choose one to show only its machines",
             self.action_hosts),
            ("Port forwards", "Add or remove the selected machine's forwards",
             self.action_ports),
            ("Copy files", "Into or out of the selected machine", self.action_copy),
            ("Command line", ":machines, :start NAME, ...", self.action_command_line),
            ("Filter machines", "Filter by name or state", self.action_filter),
            ("Toggle event scope", "All machines or the selected one",
             self.action_toggle_events),
            ("Next theme", "Cycle boxui's themes", self.action_next_theme),
            ("Keys", "Every key binding", self.action_help),
        ):
            yield SystemCommand(title, help_text, action)
