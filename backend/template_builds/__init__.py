"""Building templates: booting each variant through the driver and saving its memory
(`snapshot`), and the whole `boxui template build` (`from_source`). Above supervision,
since a build boots real machines (on ports picked and retried as the supervisor's are);
the template store it writes into is `backend.templates`."""
