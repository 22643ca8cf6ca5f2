"""`v` shows services with their instances grouped under them, live as they scale."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Tree

from backend.services.scale_models import ScaleRequest
from backend.services.service_spec import ServiceSpec
from boxui.tui.app import BoxuiApp
from boxui.tui.screens.services import ServicesScreen
from tests.app.conftest import MakeApp, embedded
from tests.app.pilot_helpers import SIZE, started, until
from tests.fake_driver import FakeDriver


def shape(app: BoxuiApp) -> list[str]:
    """Each service's name, then the state of each instance under it."""
    tree = app.screen.query_one(Tree)
    lines = []
    for service in tree.root.children:
        name = str(service.label).split()[0]
        lines.append(name)
        for leaf in service.children:
            instance, state = str(leaf.label).split()[:2]
            assert instance.startswith(f"{name}-")
            lines.append(state)
    return lines


async def test_services_view_groups_instances_and_follows_scaling(
        home: Path, make_app: MakeApp, fake_driver: FakeDriver) -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await started(pilot, app)
        services = embedded(app)._services
        assert services is not None, "the embedded backend runs the service manager"
        await services.create(ServiceSpec(name="web", replicas=2))
        await pilot.press("v")
        await until(pilot, lambda: isinstance(app.screen, ServicesScreen))
        await until(pilot, lambda: shape(app) == ["web", "ready", "ready"])
        label = str(app.screen.query_one(Tree).root.children[0].label)
        assert "2/2 ready, max 4" in label
        await services.scale(ScaleRequest(request_id="t", service="web", replicas=1))
        await until(pilot, lambda: shape(app) == ["web", "ready"])
        await pilot.press("escape")
        assert not isinstance(app.screen, ServicesScreen)
