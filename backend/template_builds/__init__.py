"""Building templates: booting each variant through the supervisor and saving its
memory (`snapshot`), and the whole `boxui template build` (`from_source`). Above
supervision, since a build boots real machines; the template store it writes into is
`backend.templates`."""
