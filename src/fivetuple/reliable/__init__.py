"""Reliable, ordered delivery over UDP: a sans-IO core."""
