"""Canvass: sales-force automation for reps who sell in the field."""
