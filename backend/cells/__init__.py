"""Cells: one command run in a throwaway machine of its own (`boxui run`)."""
