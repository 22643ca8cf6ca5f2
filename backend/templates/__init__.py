"""Templates: pre-built machines to create others from, cold or warm.

- `template_spec`: the TOML a user writes (base image, profile, variants by role).
- `cache_key`: the SHA-256 over the inputs that define a variant's build output.
- `revision`: what one build produced (`revision.json`), with SnapshotInfo per variant.
- `layout`: where a template's files live under the state dir.
- `revision_store`: listing, the atomically switched `current` link, removal.
- `publish`: one build's revision, written all-or-nothing.
- `restore_plan`: turning a template machine's start into a snapshot restore, and the
  refusal when the snapshot does not match what the machine asks for.
- `machine_from_template`, `choices`: resolving `ID[:ROLE]` for the CLI and the app.

Building a template boots machines, so it sits above supervision, in
`backend.template_builds`; the host end of the restore agent is
`backend.supervision.restore_agent`.
"""
