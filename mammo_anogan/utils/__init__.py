"""Shared utilities: atomic IO, hashing, errors, config resolvers."""
