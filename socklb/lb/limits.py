"""Per-service limits: one definition, checked by both planes, so the control
plane never accepts what a node would refuse."""
from __future__ import annotations

MAX_BACKENDS = 4096
MAX_FRONTENDS = 64
MAX_AFFINITY_SECONDS = 7 * 86400  # a week
MAX_WEIGHT = 65535

# Maglev table size on every node: fixed, so that removing a backend moves
# only its share of the table (a size change would reshuffle every slot).
MAGLEV_TABLE_SIZE = 1021
