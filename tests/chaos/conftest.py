"""Fixtures of the chaos tests."""

from tests.chaos.fault_stack import chaos

__all__ = ["chaos"]
