"""What `boxui pool ls`, `GET /v1/pools` and the app show: a line per variant, never a
member as if it were a machine."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, Field

from backend.errors import BoxuiError
from backend.pools.members import MemberRecord, MemberStore
from backend.pools.settings import desired_sizes, memory_budget_mib
from backend.state.state_dir import StateDir


class PoolView(BaseModel):
    template: str = Field(description="ID:ROLE")
    size: int = Field(description="members the pool keeps")
    source: str = Field(description="where the size comes from: toml (the template) "
                        "or set (`boxui pool set`); none for a pool being emptied")
    ready: int = Field(description="members restored, warm and waiting to be claimed")
    warming: int = Field(description="members being restored or warmed now")
    memory_mib: int = Field(description="guest memory the pool's members hold")
    revision: str | None = Field(default=None, description="the revision its members are of")
    problem: str | None = Field(default=None, description="why it is not full, if known")


class PoolsReport(BaseModel):
    memory_budget_mib: int
    memory_used_mib: int
    pools: list[PoolView]


def report(dirs: StateDir, ready: list[MemberRecord], warming: dict[str, int],
           problems: dict[str, str], warming_mib: dict[str, int] | None = None
           ) -> PoolsReport:
    try:
        wanted = desired_sizes(dirs)
    except BoxuiError as exc:
        wanted, problems = {}, {**problems, "*": str(exc)}
    try:
        budget = memory_budget_mib(dirs)
    except BoxuiError as exc:
        budget, problems = 0, {**problems, "*": str(exc)}
    counts = Counter(r.template for r in ready)
    memory = Counter[str]()
    for record in ready:
        memory[record.template] += record.memory_mib
    for ref, mib in (warming_mib or {}).items():
        memory[ref] += mib
    refs = sorted(set(wanted) | set(counts) | {r for r, n in warming.items() if n})
    used = sum(memory.values())
    views = []
    for ref in refs:
        size, source = wanted.get(ref, (0, "none"))
        problem = problems.get(ref) or problems.get("*")
        revisions = sorted({r.revision for r in ready if r.template == ref})
        views.append(PoolView(template=ref, size=size, source=source, ready=counts[ref],
                              warming=warming.get(ref, 0), memory_mib=memory[ref],
                              revision=revisions[0] if revisions else None, problem=problem))
    return PoolsReport(memory_budget_mib=budget, memory_used_mib=used, pools=views)


def disk_report(dirs: StateDir) -> PoolsReport:
    """The pools as their records on disk say, for `boxui pool ls` with no daemon."""
    records = [r for r in MemberStore(dirs).records() if isinstance(r, MemberRecord)]
    warming = Counter(r.template for r in records if r.state == "warming")
    warming_mib = Counter[str]()
    for record in records:
        if record.state == "warming":
            warming_mib[record.template] += record.memory_mib
    return report(dirs, [r for r in records if r.state == "ready"], dict(warming), {},
                  dict(warming_mib))
