"""Services, each with its instances grouped under it: desired, ready and maximum
counts, and every instance's state and endpoint. Reloaded whenever an event arrives
(the app calls `reload`), so scaling plays out live."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Footer, Static, Tree

from backend.services.scale_models import InstanceInfo, ServiceView
from boxui.tui.messages import TimelineRequested
from boxui.tui.widgets.filter_bar import FilterBar, FilteredScreen

StateColour = Callable[[str], str]


def service_label(view: ServiceView) -> Text:
    spec = view.spec
    text = Text()
    text.append(spec.name, style="bold")
    text.append(f"  {view.current_replicas}/{spec.replicas} ready, max {spec.max_replicas}"
                f"  ·  {spec.vcpus} vCPU, {spec.memory_mib} MiB", style="dim")
    return text


def instance_label(instance: InstanceInfo, colour: StateColour) -> Text:
    state = instance.state.value
    text = Text()
    text.append(f"{instance.id:<24}")
    text.append(f"{state:<10}", style=colour(state))
    text.append(f"  {instance.endpoint or '-'}")
    return text


class ServicesScreen(FilteredScreen):
    VIEW = "services"
    BINDINGS = [Binding("v", "close", "Back", show=False), Binding("T", "timeline", "Timeline")]

    def __init__(self, load: Callable[[], Awaitable[list[ServiceView]]],
                 colour: StateColour, filters: dict[str, str] | None = None) -> None:
        super().__init__(filters)
        self._load = load
        self._colour = colour
        self._views: list[ServiceView] = []

    def compose(self) -> ComposeResult:
        yield FilterBar()
        tree: Tree[str] = Tree("services", id="services")
        tree.show_root = False
        yield tree
        yield Static("", id="services-empty")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(Tree).border_title = "services"
        self.reload()

    @work(exclusive=True, group="services", exit_on_error=False)
    async def reload(self) -> None:
        self._views = await self._load()
        self.refilter()

    def refilter(self) -> None:
        """A service is kept when its name or any instance (id, state) matches."""
        wanted = self.filter
        views = [v for v in self._views if wanted.matches(
            v.spec.name, *(f"{i.id} {i.state.value}" for i in v.instances))]
        tree = self.query_one(Tree)
        tree.border_title = f"services {wanted.describe()}".rstrip()
        expanded = {str(node.data) for node in tree.root.children if node.is_expanded}
        fresh = not tree.root.children
        tree.clear()
        for view in sorted(views, key=lambda v: v.spec.name):
            node = tree.root.add(service_label(view), data=view.spec.name,
                                 expand=fresh or view.spec.name in expanded)
            for instance in sorted(view.instances, key=lambda i: i.id):
                node.add_leaf(instance_label(instance, self._colour), data=instance.id)
        self.query_one("#services-empty", Static).update(
            "" if views else "no services match" if self._views else
            "no services yet: `boxui service create NAME --replicas N`")

    def action_timeline(self) -> None:
        """A service's row: all its instances, past ones too; an instance's: that one."""
        tree: Tree[str] = self.query_one(Tree)
        node = tree.cursor_node or next(iter(tree.root.children), None)  # none moved to
        if node is None or node.data is None:
            return
        is_service = node.parent is tree.root
        self.app.post_message(TimelineRequested(service=node.data) if is_service
                              else TimelineRequested(machine=node.data))

    def action_close(self) -> None:
        self.dismiss(None)
