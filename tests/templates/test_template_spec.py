from __future__ import annotations

from pathlib import Path

import pytest

from backend.errors import SpecError
from backend.templates.template_spec import parse_template

PATH = Path("/x/template.toml")
GOOD = """
template_id = "web"
[[variants]]
role = "worker"
vcpus = 2
memory_mib = 512
[[variants]]
role = "db"
name = "the-db"
profile = "minimal"
"""


def test_variants_by_role_and_default_names() -> None:
    config = parse_template(GOOD, PATH)
    assert config.schema_version == 1 and config.profile == "minimal"
    worker, db = config.variant("worker"), config.variant("db")
    assert (worker.vcpus, worker.memory_mib, worker.data_disk_mib) == (2, 512, 0)
    assert config.variant_name(worker) == "web-worker"  # <template_id>-<role>
    assert config.variant_name(db) == "the-db"
    assert config.variant_profile(worker) == "minimal"


@pytest.mark.parametrize(("text", "words"), [
    ("schema_version = 2\n" + GOOD, "schema_version 2 is newer than this boxui understands"),
    (GOOD + "memmory_mib = 3\n", "unknown key 'variants.1.memmory_mib'"),
    (GOOD.replace('role = "db"', 'role = "worker"'), "role 'worker' appears more than once"),
    (GOOD.replace('profile = "minimal"', 'profile = "huge"'), "unknown profile 'huge'"),
    ('template_id = "Web"\n[[variants]]\nrole = "w"\n', "invalid template_id 'Web'"),
    ('template_id = "web"\nvariants = []\n', "variants"),
    (GOOD.replace("vcpus = 2", "data_disk_mib = 10"), "data_disk_mib"),
    ("template_id = \n", "invalid TOML"),
    ('template_id = "' + "a" * 60 + '"\n[[variants]]\nrole = "worker"\n', "too long"),
])
def test_bad_templates_are_one_line_naming_the_problem(text: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_template(text, PATH)
    message = str(caught.value)
    assert words in message and str(PATH) in message and "\n" not in message
