"""Bringing a cluster of boards up and down from the head, over SSH."""
