"""The object store: originals and renditions under the DESIGN.md key layout."""

from radlake.storage.store import ObjectStore, open_store

__all__ = ["ObjectStore", "open_store"]
