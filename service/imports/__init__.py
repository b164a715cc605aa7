"""Catalog imports and exports: archives read without trusting them, jobs that survive restarts."""
