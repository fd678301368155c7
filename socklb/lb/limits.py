"""Per-service and policy limits: one definition, checked by both planes, so the control
plane never accepts what a node would refuse."""
from __future__ import annotations

MAX_BACKENDS = 4096
MAX_FRONTENDS = 64
MAX_AFFINITY_SECONDS = 7 * 86400  # a week
MAX_WEIGHT = 65535

# Maglev table size on every node: fixed, so that removing a backend moves
# only its share of the table (a size change would reshuffle every slot).
MAGLEV_TABLE_SIZE = 1021

# Policy (issue 12). Per node: what its kernel maps hold; per resource: what
# the API accepts. A write that would exceed a node's limit is refused whole.
MAX_WORKLOADS_PER_NODE = 4096      # `workloads` map (cgroup id -> workload)
MAX_POLICY_SETS_PER_NODE = 4096    # distinct sets of selecting policies
MAX_FRONTEND_VERDICTS_PER_NODE = 65536  # `policy_frontends` (set, frontend) entries
MAX_PREFIXES_PER_NODE = 65536      # `policy_prefixes` LPM entries, over all sets
MAX_PORT_RULES = 16                # port rules of one prefix after flattening
MAX_REDIRECTS_PER_NODE = 256
MAX_CGROUP_DEPTH = 16              # cgroup levels the hooks walk up to find a workload
MAX_LABELS = 64                    # labels of a workload, keys of a selector
MAX_RULES_PER_POLICY = 256
MAX_CIDRS_PER_POLICY = 16384       # over all its rules
MAX_SERVICES_PER_RULE = 256
MAX_PORTS_PER_RULE = 16
MAX_ADDRESSES_PER_WORKLOAD = 16

# FQDN policy (issue 13): patterns (`to_fqdns`) and the DNS servers a set learns from.
MAX_FQDNS_PER_RULE = 256
MAX_FQDNS_PER_POLICY = 1024          # over all its rules
MAX_FQDN_PATTERNS_PER_NODE = 16384   # (set, pattern) entries over all sets (`policy_fqdns`, `dns_patterns`)
MAX_DNS_SERVERS_PER_NODE = 1024      # (set, server) entries over all sets (`dns_servers` holds them and their union, twice)
