"""Projection: an event-level model of the ring, fitted to measured runs, projected to other sizes."""
