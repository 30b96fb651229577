"""Test support that ships with the library: fault injection for the reliability suite."""
