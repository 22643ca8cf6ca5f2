"""OS images (`:images`): the default guest, every built root filesystem and every recipe
not built yet, with what uses them; as `boxui image ls` lists them, from the backend."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from textual import work
from textual.app import ComposeResult
from textual.widgets import DataTable, Footer

from backend.images.catalog import ImageListing
from backend.state.disk_size import format_size
from boxui.tui.widgets.filter_bar import FilterBar, FilteredScreen

COLUMNS = ("NAME", "KIND", "BUILT", "SIZE", "PACKAGES", "USED BY", "DESCRIPTION")


def image_row(image: ImageListing) -> tuple[str, ...]:
    built = image.built or image.kind == "default"  # the default guest ships with boxui
    return (image.name, image.kind, "yes" if built else "no (recipe)",
            format_size(image.size_bytes) if image.size_bytes else "-",
            str(image.packages) if image.packages is not None else "-",
            ", ".join(image.used_by) or "-", image.description)


class ImagesScreen(FilteredScreen):
    VIEW = "images"

    def __init__(self, load: Callable[[], Awaitable[list[ImageListing]]],
                 filters: dict[str, str] | None = None) -> None:
        super().__init__(filters)
        self._load = load
        self._images: list[ImageListing] = []

    def compose(self) -> ComposeResult:
        yield FilterBar()
        yield DataTable(id="images", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table: DataTable[str] = self.query_one(DataTable)
        table.add_columns(*COLUMNS)
        table.border_title = "images"
        self.reload()

    @work(group="images", exclusive=True, exit_on_error=False)
    async def reload(self) -> None:
        self._images = await self._load()
        self.refilter()

    def refilter(self) -> None:
        wanted = self.filter
        table: DataTable[str] = self.query_one(DataTable)
        table.clear()
        for image in self._images:
            row = image_row(image)
            if wanted.matches(" ".join(row)):
                table.add_row(*row)
        table.border_title = f"images {wanted.describe()}".rstrip()
