"""The encrypted site store: envelope-encrypted objects and manifest under ``<site-dir>/store/``."""

from client.store.errors import StoreError
from client.store.manifest import ImageRecord
from client.store.rotation import rewrap_store, rotate_site_kek
from client.store.store import SiteStore

__all__ = ["SiteStore", "ImageRecord", "StoreError", "rewrap_store", "rotate_site_kek"]
