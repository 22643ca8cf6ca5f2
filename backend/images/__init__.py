"""OS images: Debian root filesystems built from recipes, shared read-only by the disk
machines that boot from them.

An image is `<state>/images/os/<name>/` with `rootfs.ext4` and, written last,
`image.json`; a directory without `image.json` is a build in progress or one that died.
"""
