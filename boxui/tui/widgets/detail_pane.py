"""The selected machine: its spec, its state (with the reason when something went wrong)
and sparklines of CPU % and guest memory over the last minutes."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline, Static

from backend.state.machine_store import LoadedMachine
from backend.state.port_forward_view import forward_views
from backend.supervision.health import HealthHistory
from boxui.tui.widgets.machine_table import image_of

SPARK_SECONDS = 300.0


class DetailPane(Vertical):
    _text = "no machine selected"

    def compose(self) -> ComposeResult:
        yield Static("no machine selected", id="detail-text")
        yield Label("CPU %", classes="spark-label")
        yield Sparkline([], id="spark-cpu")
        yield Label("guest memory used", classes="spark-label")
        yield Sparkline([], id="spark-mem")

    def show(self, machine: LoadedMachine | None, history: HealthHistory | None,
             state_colour: str, work: str | None = None) -> None:
        if machine is None:
            self._set_text("no machine selected")
            self._spark([], [])
            return
        lines = [f"[b]{machine.name}[/b]",
                 f"state  [{state_colour}]{machine.state.value}[/]"]
        if work:
            lines.append(f"work   [i]{_escape(work)}[/i]")
        if machine.reason:
            lines.append(f"reason [i]{_escape(machine.reason)}[/i]")
        spec, record = machine.spec, machine.record
        if spec is not None:
            lines.append(f"vcpus  {spec.vcpus}   memory {spec.memory_mib} MiB")
            lines.append(f"accel  {spec.accel}   restart {spec.restart}")
            image = str(spec.kernel) if spec.kernel and not spec.image else image_of(machine)
            disk = f"   disk {spec.disk}" if spec.disk else ""
            lines.append(f"image  {_escape(image)}{disk}")
            if spec.ports:
                lines.append("ports  " + ", ".join(
                    f"{v.live_host or v.host or '*'}->{v.guest}/{v.protocol}"
                    for v in forward_views(machine)))
        if record is not None:
            if record.pid:
                lines.append(f"pid    {record.pid}")
            if record.ssh_port and machine.state.value in ("ready", "busy", "draining",
                                                                     "unhealthy"):
                lines.append(f"ssh    127.0.0.1:{record.ssh_port}")
        self._set_text("\n".join(lines))
        if history is None:
            self._spark([], [])
            return
        cpu = [v for v in history.series(machine.name, "cpu_percent", SPARK_SECONDS)
               if v is not None]
        mem = [v for v in history.series(machine.name, "guest_used_bytes", SPARK_SECONDS)
               if v is not None]
        self._spark(cpu, mem)

    def _set_text(self, markup: str) -> None:
        """Health arrives every second but the text only changes with state or spec:
        skip identical updates, each of which would re-lay out the whole screen."""
        if markup != self._text:
            self._text = markup
            self.query_one("#detail-text", Static).update(markup)

    def _spark(self, cpu: list[float], mem: list[float]) -> None:
        self.query_one("#spark-cpu", Sparkline).data = cpu
        self.query_one("#spark-mem", Sparkline).data = mem


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
