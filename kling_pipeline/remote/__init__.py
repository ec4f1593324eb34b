"""The shared remote: a content-addressed store of the videos, and an index by request key,
reached through fsspec (docs/remote.md). Imported only by push and pull: fsspec and its
backends are never loaded by plan, validate or status."""
