/* socklb map layouts: the one place both the BPF programs and user space
 * (socklb/dataplane/layout.py mirrors it; a test compares the two) agree on.
 *
 * Addresses are 16 bytes in network order for both families; an IPv4 address
 * is stored v4-mapped (::ffff:a.b.c.d), so an IPv4 socket and a v4-mapped IPv6
 * socket connecting to the same IPv4 VIP find the same service entry.
 */
#ifndef SOCKLB_H
#define SOCKLB_H

#ifndef SOCKLB_USERSPACE
#include <linux/types.h>
#endif

/* Capacities; the loader may override them with -D at compile time. */
#ifndef SOCKLB_SERVICES_MAX
#define SOCKLB_SERVICES_MAX 262144 /* master + selection slots */
#endif
#ifndef SOCKLB_BACKENDS_MAX
#define SOCKLB_BACKENDS_MAX 262144
#endif
#ifndef SOCKLB_AFFINITY_MAX
#define SOCKLB_AFFINITY_MAX 65536
#endif
#ifndef SOCKLB_REV_NAT_MAX
#define SOCKLB_REV_NAT_MAX 65536
#endif

/* Reverse-NAT keys an unconnected UDP socket remembers so that sock_release
 * can delete them; older ones are left to the LRU. */
#define SOCKLB_FLOW_RNAT_RING 4

enum socklb_selection {
	SOCKLB_SEL_RANDOM = 1,
	SOCKLB_SEL_MAGLEV = 2,
};

enum socklb_backend_state {
	SOCKLB_BE_ACTIVE = 1,
	SOCKLB_BE_DRAINING = 2,
	SOCKLB_BE_QUARANTINED = 3,
};

/* services: slot 0 is the master entry of a frontend (VIP, port, proto);
 * slots 1..count hold the selection table (one backend id per slot).
 * `table` says whose entries: the service's (SOCKLB_TABLE_SERVICE), or a
 * local redirect's of the same frontend (SOCKLB_TABLE_REDIRECT: its own
 * master, frontend id, slots and backends: the node's local workloads),
 * looked up only when the service master has SOCKLB_SVC_F_REDIRECTED. */
enum socklb_table {
	SOCKLB_TABLE_SERVICE = 0,
	SOCKLB_TABLE_REDIRECT = 1,
};

struct socklb_svc_key {
	__u32 addr[4];
	__u16 port;  /* network order */
	__u8 proto;  /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 table;  /* enum socklb_table */
	__u16 slot;
	__u16 pad2;
};

/* socklb_svc_val.flags of a service-table master. */
enum socklb_svc_flag {
	SOCKLB_SVC_F_REDIRECTED = 1,  /* a local redirect serves it: look up the redirect table */
	SOCKLB_SVC_F_NOT_SERVICE = 2, /* a placeholder for a redirect of an address that is no
				       * service VIP: no backends; not redirected, the address is
				       * left alone, and policy judges it as an address */
};

struct socklb_svc_val {
	__u32 id;               /* master: frontend id; slot: backend id */
	__u32 count;            /* master: slots in the table (0: no backend) */
	__u32 affinity_timeout; /* master: seconds, 0 = no affinity */
	__u8 selection;         /* master: enum socklb_selection */
	__u8 flags;             /* master of the service table: enum socklb_svc_flag */
	__u16 pad;
};

/* backends: id -> address. An entry belongs to one frontend, so its state is
 * that frontend's view of the backend. */
struct socklb_backend {
	__u32 addr[4];
	__u16 port; /* network order */
	__u8 proto;
	__u8 state; /* enum socklb_backend_state */
	__u32 frontend_id;
};

/* affinity (LRU): socket LB cannot see the client IP at connect time, so the
 * client is its network namespace. */
struct socklb_affinity_key {
	__u64 netns_cookie;
	__u32 frontend_id;
	__u32 pad;
};

struct socklb_affinity_val {
	__u64 last_used_ns; /* bpf_ktime_get_ns() */
	__u32 backend_id;
	__u32 pad;
};

/* rev_nat (LRU): for unconnected UDP, (socket, backend) -> VIP that was asked. */
struct socklb_rnat_key {
	__u64 cookie;
	__u32 addr[4];
	__u16 port;
	__u16 pad;
	__u32 pad2;
};

struct socklb_rnat_val {
	__u32 addr[4];
	__u16 port;
	__u16 pad;
	__u32 frontend_id;
};

/* The flow record of a load-balanced socket, its conntrack entry: what the
 * reverse translation (getpeername, recvmsg), termination, the flows dump and
 * socket statistics read. Where it lives:
 *  - a connect() to a VIP writes it into the socket's slot of conn_flows
 *    (struct socklb_conn_slot), which sock_release frees: no allocation per
 *    connection (socket storage costs two allocations at connect and two
 *    RCU-deferred frees at close, ~2 us of a ~3 us connect hook);
 *  - a sendmsg() to a VIP (unconnected UDP), and a connect() that finds no
 *    free slot, write it into the socket storage `flows` (struct
 *    socklb_sk_flow), with the reverse-NAT ring sendmsg needs; the kernel
 *    frees it with the socket.
 * A socket has at most one live record (frontend_id != 0) from connect():
 * a connect() clears the other place's, a connect() elsewhere both. */
struct socklb_flow {
	__u32 frontend_id; /* 0: cleared (re-connected away from the VIP) */
	__u32 backend_id;
	__u32 vip[4];
	__u32 backend_addr[4];
	__u16 vip_port;     /* network order */
	__u16 backend_port; /* network order */
	__u8 proto;
	__u8 pad[3];
};

/* flows: socket storage. */
struct socklb_sk_flow {
	struct socklb_flow flow;
	__u8 rnat_next; /* next slot of rnat ring to overwrite */
	__u8 rnat_used; /* valid entries in the rnat ring */
	__u8 pad[6];
	struct socklb_rnat_key rnat[SOCKLB_FLOW_RNAT_RING];
};

/* conn_flows: array of SOCKLB_CONN_SLOTS slots, shared lock-free. A socket's
 * slot is one of the SOCKLB_CONN_PROBE after cookie % SOCKLB_CONN_SLOTS
 * (cookies are sequential, so neighbours are mostly free), claimed with a
 * compare-and-swap of cookie from 0 and freed by writing 0 (bpf/conn_flows.h).
 * Cookies are never reused: a slot whose socket closed without sock_release
 * running (the programs detached meanwhile) matches no socket, and only
 * narrows the probe window of later ones. */
/* Fixed, not a loader capacity: the hooks and the iterators index the slots
 * alike. */
#define SOCKLB_CONN_SLOTS 65536 /* a power of 2 */
#define SOCKLB_CONN_PROBE 4

struct socklb_conn_slot {
	__u64 cookie; /* bpf_get_socket_cookie() of the owner, 0: free */
	struct socklb_flow flow;
};

/* counters: per-CPU array indexed by this enum. */
enum socklb_counter {
	SOCKLB_CNT_TRANSLATED = 0,
	SOCKLB_CNT_AFFINITY_HIT,
	SOCKLB_CNT_AFFINITY_MISS,
	SOCKLB_CNT_NO_BACKEND,
	SOCKLB_CNT_POLICY_DENY,
	SOCKLB_CNT_RNAT_HIT,
	SOCKLB_CNT_RNAT_MISS,
	SOCKLB_CNT_RNAT_CLEANED,
	SOCKLB_CNT_FQDN_DENY,    /* policy denials at a destination no frontend or prefix decides */
	SOCKLB_CNT_FQDN_EXPIRED, /* of those: the workload had learned it, every slot expired */
	SOCKLB_CNT_MAX,
};

/* meta: array map of __u64, state the agent keeps with the maps. */
enum socklb_meta {
	SOCKLB_META_VERSION = 0,      /* last applied desired-state version */
	SOCKLB_META_NEXT_FRONTEND_ID, /* ids are never reused while pinned */
	SOCKLB_META_NEXT_BACKEND_ID,
	SOCKLB_META_LAYOUT,           /* SOCKLB_LAYOUT_VERSION of the maps */
	SOCKLB_META_MAX,
};

/* --- policy (issue 12) -------------------------------------------------
 *
 * workloads        cgroup id -> struct socklb_workload: the cgroup of a
 *                  workload (with exact matching, every cgroup below it too)
 * policy_frontends {set, frontend id} -> verdict, for destinations that are
 *                  a frontend (as the application addresses it)
 * policy_prefixes  LPM trie {set, address} -> the port rules of the longest
 *                  prefix, for destinations that are not a frontend. The
 *                  set is matched whole: prefixlen = 32 + 96 + IPv4 length
 *                  (v4-mapped) or 32 + IPv6 length. The families are apart:
 *                  an IPv4 prefix (one written inside ::ffff:0:0/96 too) has
 *                  SOCKLB_POL_SET_V4 in its set, and so has the lookup of an
 *                  IPv4 or v4-mapped destination; IPv6 prefixes and lookups
 *                  have not. So ::/0 holds no IPv4 destination, 0.0.0.0/0 no
 *                  IPv6 one.
 * workload_denies  per-CPU denials, indexed by workload id
 * policy_cfg       one entry: whether the hooks look for workloads at all,
 *                  and which cgroup levels they walk
 *
 * Map sizes are twice the per-node limits of socklb/lb/limits.py: an update
 * writes new entries before it deletes the old ones.
 */
#define SOCKLB_WORKLOAD_IDS_MAX 8192      /* workload ids 0..8191: index of workload_denies */
#define SOCKLB_WORKLOAD_CGROUPS_MAX 65536 /* workloads map entries */
#define SOCKLB_POLICY_FRONTENDS_MAX 131072
#define SOCKLB_POLICY_PREFIXES_MAX 131072
#define SOCKLB_PORT_RULES_MAX 16          /* rules of one prefix (limits.MAX_PORT_RULES) */
#define SOCKLB_CGROUP_DEPTH_MAX 16        /* levels walked (limits.MAX_CGROUP_DEPTH) */
/* The family bit of a policy_prefixes key's set (1 << 31): set ids are below it. */
#define SOCKLB_POL_SET_V4 2147483648

enum socklb_policy_action {
	SOCKLB_POL_ALLOW = 1,
	SOCKLB_POL_DENY = 2,
};

enum socklb_workload_flag {
	SOCKLB_WL_BYPASS = 1, /* new sockets are not translated */
};

struct socklb_workload {
	__u32 id;         /* index of workload_denies */
	__u32 policy_set; /* 0: unrestricted */
	__u32 flags;      /* enum socklb_workload_flag */
	__u32 pad;
};

struct socklb_policy_fe_key {
	__u32 set;
	__u32 frontend_id;
};

struct socklb_policy_verdict {
	__u32 action; /* enum socklb_policy_action */
};

struct socklb_policy_prefix_key {
	__u32 prefixlen; /* bits of set + addr that must match */
	__u32 set;       /* set id, | SOCKLB_POL_SET_V4 for IPv4 */
	__u8 addr[16];
};

/* Matches a port in [port, end_port] (host order) and proto (0: any). */
struct socklb_port_rule {
	__u16 port;
	__u16 end_port;
	__u8 proto;
	__u8 action; /* enum socklb_policy_action */
	__u16 pad;
};

/* A DENY rule that matches denies, else an ALLOW rule that matches allows,
 * else denied. */
struct socklb_policy_rules {
	__u32 n;
	struct socklb_port_rule rules[SOCKLB_PORT_RULES_MAX];
};

/* FQDN policy (issue 13): policy_fqdns, {set, pattern id} -> the port rules
 * of a name pattern of the set (flattened by the control plane). An address
 * the DNS learner learned for a workload (bpf/dns.h dns_learned: workload id,
 * address -> expiry, pattern id) is allowed, until it expires, when no
 * frontend verdict or prefix decides it and these rules allow the port. */
#define SOCKLB_POLICY_FQDNS_MAX 65536
struct socklb_policy_fqdn_key {
	__u32 set;
	__u32 pattern; /* dns.pattern_id(): a hash of the canonical pattern, not 0 */
};

/* socklb_policy_cfg.flags */
#define SOCKLB_CFG_F_EXEMPT_ONLY 1 /* no workload restricts or bypasses: the entries are
				    * there for redirect exemptions only, looked up for a
				    * redirected frontend alone */

struct socklb_policy_cfg {
	__u32 cgroups;  /* workloads entries; 0 (or none restricted, bypassed or exempt): skip */
	__u8 min_level; /* cgroup levels of the workloads (0 = the root) */
	__u8 max_level;
	__u8 flags;     /* SOCKLB_CFG_F_* */
	__u8 pad;
};

/* redirect_exempt: {workload id, redirect frontend id} -> 1: the local
 * backend workloads of a redirect, which still reach the original service
 * (a node-local DNS cache must reach the cluster DNS). Looked up only for a
 * redirected frontend, by a process that is a workload. */
#define SOCKLB_REDIRECT_EXEMPT_MAX 65536

struct socklb_exempt_key {
	__u32 workload_id;
	__u32 frontend_id; /* the redirect table's master id */
};

/* Bump when a map layout changes: pinned maps of another layout are not adopted. */
#define SOCKLB_LAYOUT_VERSION 2

#endif /* SOCKLB_H */
