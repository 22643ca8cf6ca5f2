"""Building templates: booting each variant through the driver and saving its memory
(`snapshot`), the whole `boxui template build` (`from_source`), and a build a daemon's
supervisor runs for an API client (`runs`). Above supervision,
since a build boots real machines (on ports picked and retried as the supervisor's are);
the template store it writes into is `backend.templates`."""
