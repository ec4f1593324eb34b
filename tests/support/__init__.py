"""Helpers shared by the tests: fixtures, a browser, the paths of the repository."""
