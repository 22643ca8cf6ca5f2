"""The bounds of a machine's size, kept apart from the spec model so that the CLI can
declare its options without loading pydantic (every command would pay for it)."""

MAX_VCPUS = 64
MAX_MEMORY_MIB = 1024 * 1024
MAX_DISK_GIB = 16 * 1024
#: the most replicas one scale request may ask for (a service's own max is lower)
MAX_SCALE_REQUEST = 10_000
