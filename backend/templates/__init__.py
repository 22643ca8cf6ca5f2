"""Templates: pre-built machines to create others from, cold or warm.

- `template_spec`: the TOML a user writes (base image, profile, variants by role).
- `cache_key`: the SHA-256 over the inputs that define a variant's build output.
- `revision`: what one build produced (`revision.json`), with SnapshotInfo per variant.
- `layout`: where a template's files live under the state dir.
- `revision_store`: listing, the atomically switched `current` link, removal.
- `build`: one build, all-or-nothing; `snapshot_build`: boot a variant and save it;
  `build_from_source`: what `boxui template build` runs.
- `restore_plan`: turning a template machine's start into a snapshot restore, and the
  refusal when the snapshot does not match what the machine asks for.
- `machine_from_template`, `choices`: resolving `ID[:ROLE]` for the CLI and the app.
- `restore_agent`: fresh kernel RNG state and the host's time for a guest restored
  from a shared snapshot (through the agent in `backend.guest.restore_agent_elf`).
"""
