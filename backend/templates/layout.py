"""Where a template's files live: `templates/<id>/` in the state dir.

    templates/<id>/template.toml             the spec as last built
    templates/<id>/artifacts/<revision>/     one finished build (never changed after)
    templates/<id>/artifacts/.build-*        a build in progress (or a crashed one)
    templates/<id>/current -> artifacts/<revision>   switched by rename, never rewritten
    templates/<id>/.lock                     held by a build or a removal
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from backend.state.names import validate_name
from backend.state.state_dir import StateDir

BUILD_PREFIX = ".build-"


def templates_root(dirs: StateDir) -> Path:
    return dirs.root / "templates"


@dataclass(frozen=True)
class TemplateDir:
    root: Path

    @classmethod
    def of(cls, dirs: StateDir, template_id: str) -> TemplateDir:
        return cls(templates_root(dirs) / validate_name(template_id))

    @property
    def template_id(self) -> str:
        return self.root.name

    @property
    def spec(self) -> Path:
        return self.root / "template.toml"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def revision_dir(self, revision: str) -> Path:
        return self.artifacts / revision
