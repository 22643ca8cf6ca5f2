"""Operating-system images (Debian root filesystems) that disk machines boot from."""
