"""Describing a cluster of boards: the inventory file and the layout derived from it."""
