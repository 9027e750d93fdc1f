"""Helpers that give tests real parts (a loopback HTTP server, generated files) instead of mocks."""
