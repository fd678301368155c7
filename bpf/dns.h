/* The in-kernel DNS learner (bpf/dns.bpf.c, user side
 * socklb/dataplane/dns.py): every map key, value and limit that crosses the
 * kernel boundary. socklb/dataplane/layout.py mirrors it and
 * tests/unit/test_layout.py compares the two field by field.
 *
 * Addresses are 16 bytes in network order, IPv4 v4-mapped (as in socklb.h);
 * ports are in network order. Names are hashed in their wire form
 * (length-prefixed labels and the final zero byte), lowercased (A-Z only),
 * with 64-bit FNV-1a:
 *   name hash    the bytes front to back: a name's identity (question,
 *                owners and targets of a CNAME chain, `learned.name_hash`)
 *   suffix hash  the bytes back to front, so that the hash of every suffix
 *                (a label start to the end) comes out of one pass: the key
 *                of `dns_patterns`
 */
#ifndef SOCKLB_DNS_H
#define SOCKLB_DNS_H

/* Limits of the parser (documented in docs/fqdn.md). */
#define SOCKLB_DNS_MSG_MAX 8192    /* a message of this size or more teaches nothing */
#define SOCKLB_DNS_NAME_MAX 255    /* wire length of a name, as RFC 1035 */
#define SOCKLB_DNS_HOPS_MAX 16     /* compression pointers followed in one name */
#define SOCKLB_DNS_RRS_MAX 64      /* records of all sections; more: teaches nothing */
#define SOCKLB_DNS_LEARN_MAX 32    /* addresses one answer may teach; more are not learned */
#define SOCKLB_DNS_CHAIN_MAX 8     /* names of a CNAME chain, the question's included */

/* Map capacities. */
#define SOCKLB_DNS_WORKLOADS_MAX 65536
#define SOCKLB_DNS_SERVERS_MAX 4096
#define SOCKLB_DNS_PATTERNS_MAX 65536
#define SOCKLB_DNS_LEARNED_MAX 262144
#define SOCKLB_DNS_SOCKS_MAX 65536

/* dns_servers: the set id of the union of every set's servers (what the
 * sock_ops program checks; a TCP socket has no workload there). */
#define SOCKLB_DNS_SET_ANY 0

/* Kinds of pattern (bits of socklb_dns_pattern_val.kinds). */
enum socklb_dns_kind {
	SOCKLB_DNS_EXACT = 1,     /* api.example.com: the name itself */
	SOCKLB_DNS_ONE_LABEL = 2, /* *.example.com: one label before the suffix */
	SOCKLB_DNS_ANY_DEPTH = 4, /* **.example.com: one or more labels before it */
};

/* dns_counters: per-CPU array indexed by this enum. */
enum socklb_dns_counter {
	SOCKLB_DNS_CNT_QUERIES = 0,    /* queries of a matching name recorded */
	SOCKLB_DNS_CNT_QUERIES_IGNORED, /* queries to an allowed server not recorded (no match, not A/AAAA, bad) */
	SOCKLB_DNS_CNT_ANSWERS,        /* answers that matched an outstanding query and parsed whole */
	SOCKLB_DNS_CNT_UNSOLICITED,    /* answers from an allowed server matching no query */
	SOCKLB_DNS_CNT_MALFORMED,      /* answers matching a query that did not parse (nothing taught) */
	SOCKLB_DNS_CNT_TRUNCATED,      /* answers with the TC bit (nothing taught) */
	SOCKLB_DNS_CNT_LEARNED,        /* addresses written to `dns_learned` */
	SOCKLB_DNS_CNT_TCP_SOCKETS,    /* TCP sockets to a DNS server added to `dns_socks` */
	SOCKLB_DNS_CNT_TCP_MESSAGES,   /* whole messages the stream verdict saw */
	SOCKLB_DNS_CNT_PRUNED,         /* expired entries the agent deleted (counted by user space) */
	SOCKLB_DNS_CNT_REPLACED,       /* queries that took the slot of an unanswered one (socket's slots full) */
	SOCKLB_DNS_CNT_MAX,
};

/* dns_workloads: cgroup id (u64) -> this. A process's workload is its
 * cgroup's entry, else its nearest ancestor's (bpf_skb_ancestor_cgroup_id). */
struct socklb_dns_workload {
	__u32 id;  /* the workload id learned entries are keyed by: the policy maps' (socklb_workload.id, from 0) */
	__u32 set; /* the FQDN set: its servers and patterns (not 0) */
};

/* dns_servers: the DNS servers a set may learn from -> 1 (u8). */
struct socklb_dns_server {
	__u32 set; /* SOCKLB_DNS_SET_ANY: the union of all sets */
	__u16 port; /* network order */
	__u16 pad;
	__u32 addr[4];
};

/* dns_patterns: {set, suffix hash} -> the patterns of the set on that suffix. */
struct socklb_dns_pattern_key {
	__u32 set;
	__u32 pad;
	__u64 hash; /* suffix hash of the name the pattern names (after its wildcard) */
};

struct socklb_dns_pattern_val {
	__u32 kinds;     /* enum socklb_dns_kind bits */
	__u32 exact;     /* pattern id of each kind present (0: none) */
	__u32 one_label;
	__u32 any_depth;
};

/* dns_queries (socket storage): the outstanding queries of a matching name
 * a client socket sent, recorded at egress in the socket's own storage (no
 * global map write per query; the kernel frees them with the socket). An
 * answer to the socket teaches only when it matches one: same server, port
 * and txid, within the query window, same question (name hash, type). A
 * query replaces the slot of the same {server, port, txid}, else a free
 * slot, else the oldest (an expired one first: it is older). glibc sends A
 * and AAAA in parallel on one socket; dig and TCP clients one per socket.
 * A TCP socket's slots are in `dns_tcp_queries` (LRU hash, socket cookie ->
 * the same slots) instead: the stream verdict that reads its answers may not
 * use socket storage. The sockops program deletes the entry when the socket
 * closes. */
#define SOCKLB_DNS_QUERY_SLOTS 4

struct socklb_dns_query {
	__u64 sent_ns;   /* bpf_ktime_get_boot_ns(); 0: a free slot */
	__u64 name_hash; /* of the question */
	__u32 server[4];
	__u16 port;      /* the server's, network order */
	__u16 txid;      /* as on the wire */
	__u16 qtype;     /* 1 (A) or 28 (AAAA) */
	__u16 pad;
	__u32 workload;
	__u32 set;
	__u32 pattern;   /* the pattern id the question matched */
	__u32 pad2;
};

struct socklb_dns_queries {
	struct socklb_dns_query slots[SOCKLB_DNS_QUERY_SLOTS];
};

/* dns_learned (LRU): {workload, address} -> what answers taught, one slot
 * per name pattern (an address a CDN shares between two allowed names is
 * learned under both: removing one name from a policy leaves the other).
 * The learner refreshes the slot of the answer's pattern, else takes the
 * slot expiring first (an empty slot has expiry 0, so it goes first, then
 * an expired one). The connect hook allows the address when the rules of
 * an unexpired slot's pattern allow the port and no unexpired slot's rules
 * deny it. */
#define SOCKLB_DNS_LEARNED_SLOTS 4

struct socklb_dns_learned_key {
	__u32 workload;
	__u32 pad;
	__u32 addr[4];
};

struct socklb_dns_learned_slot {
	__u64 expiry_ns; /* boot-time ns: now + min(TTL, ttl_cap) + grace; 0: empty */
	__u32 pattern;   /* the pattern the question name matched (0: empty) */
	__u32 ttl;       /* seconds, the smallest along the CNAME chain */
};

struct socklb_dns_learned_val {
	__u64 name_hash; /* the question name that taught it last */
	struct socklb_dns_learned_slot slots[SOCKLB_DNS_LEARNED_SLOTS];
};

/* dns_cfg: array, one entry. */
struct socklb_dns_cfg {
	__u32 ttl_cap;      /* seconds; a larger TTL is cut to it */
	__u32 grace;        /* seconds added to every expiry */
	__u32 query_window; /* seconds an outstanding query waits for its answer */
	__u32 pad;
};

#endif /* SOCKLB_DNS_H */
