"""The control plane's store: embedded (SQLite, one process) or etcd (cluster).

See base.py for the contract and open_store() for the URLs.
"""

from .base import (Compacted, Compare, Event, Full, KeyValue, Leadership, Store, StoreError, Unavailable, Watch,
                   open_store)

__all__ = ["Compacted", "Compare", "Event", "Full", "KeyValue", "Leadership", "Store", "StoreError", "Unavailable",
           "Watch", "open_store"]
