// SPDX-License-Identifier: GPL-2.0
/* socklb DNS learner: learns, per workload, which addresses the DNS names its
 * FQDN set allows resolved to, from the answers the workload receives. No
 * proxy: queries are seen leaving, answers arriving, both parsed here. It
 * never drops or changes a packet (every program returns "pass"): it only
 * learns; enforcement is the connect hook's (bpf/sock_lb.c, reading the
 * pinned `dns_learned`).
 *
 * Programs (attached by socklb/dataplane/dns.py to a workload cgroup):
 *   socklb_dns_egress   cgroup_skb/egress: a UDP datagram, or a TCP segment
 *                       holding a whole length-prefixed message, to a server
 *                       of the workload's set (`dns_servers`): a query (one
 *                       question, A or AAAA, class IN) whose name matches a
 *                       pattern of the set is recorded in the socket's own
 *                       storage (`dns_queries`, a few slots per socket; a
 *                       TCP socket's in `dns_tcp_queries` by its cookie).
 *   socklb_dns_ingress  cgroup_skb/ingress: a UDP answer; it teaches when it
 *                       matches an outstanding query (same socket, server,
 *                       port and txid, same workload, within the query
 *                       window of dns_cfg; same question, compared by name
 *                       hash and type) and parses whole.
 *   socklb_dns_sockops  sockops: a TCP socket of the cgroup that connects to
 *                       a server of any set (`dns_servers` set 0) is added
 *                       to the sockhash `dns_socks`; its `dns_tcp_queries`
 *                       entry is deleted when it closes,
 *   socklb_dns_parser   sk_skb/stream_parser on `dns_socks`: the message
 *                       size from the 2-byte length prefix, so that the
 *                       strparser hands the verdict whole messages however
 *                       TCP split them (read at the strparser's offset: see
 *                       strp_msg(); a message larger than the socket's
 *                       receive buffer is passed on in pieces, unparsed),
 *   socklb_dns_verdict  sk_skb/stream_verdict: parses each whole message as
 *                       the UDP path does, and passes it to the socket.
 * The TCP programs need kernel >= 6.3 (bpf_cast_to_kern_ctx) and sockmap
 * links (>= 6.10); dns.py probes them and falls back to UDP only.
 *
 * Parser: the message (less than SOCKLB_DNS_MSG_MAX bytes) is copied into a
 * per-CPU scratch buffer (one slot per program kind, so a softirq answer
 * never overwrites a query being parsed in process context). Names are
 * decoded by bpf_loop, one label or pointer per step: compression pointers
 * must point before the start of the run they end (so they always go
 * backwards: no loops), at most SOCKLB_DNS_HOPS_MAX of them, labels of
 * 1..63 bytes, 255 bytes in all. Every record of every section (at most
 * SOCKLB_DNS_RRS_MAX) is walked and must fit, and the message must end with
 * the last record: anything else teaches nothing from that message. In the
 * answer section, records of class IN owned by a name of the chain (the
 * question, then CNAME targets, SOCKLB_DNS_CHAIN_MAX names) extend the chain
 * (CNAME) or teach an address (A for an A question, AAAA for AAAA), with the
 * smallest TTL along the chain. An answer with the TC bit teaches nothing
 * (the client retries over TCP); a non-zero RCODE teaches nothing.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "dns.h"

char LICENSE[] SEC("license") = "GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define AF_INET 2
#define AF_INET6 10
#define CGROUP_DEPTH 16

#define DNS_A 1
#define DNS_CNAME 5
#define DNS_AAAA 28
#define DNS_IN 1
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define MSG_MASK (SOCKLB_DNS_MSG_MAX - 1)
#define NAME_STEPS (SOCKLB_DNS_NAME_MAX + SOCKLB_DNS_HOPS_MAX + 1)

_Static_assert((SOCKLB_DNS_MSG_MAX & MSG_MASK) == 0, "SOCKLB_DNS_MSG_MAX is a power of two");

enum { SLOT_EGRESS = 0, SLOT_INGRESS = 1, SLOT_STREAM = 2, SLOTS = 3 };
enum { ERR_NONE = 0, ERR_BAD = 1 };

/* --- maps (pinned by dns.py under the agent's pin directory) ------------ */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_DNS_WORKLOADS_MAX);
	__type(key, __u64);
	__type(value, struct socklb_dns_workload);
} dns_workloads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_DNS_SERVERS_MAX);
	__type(key, struct socklb_dns_server);
	__type(value, __u8);
} dns_servers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_DNS_PATTERNS_MAX);
	__type(key, struct socklb_dns_pattern_key);
	__type(value, struct socklb_dns_pattern_val);
} dns_patterns SEC(".maps");

/* Socket storage, not a hash map: recording a query is a few stores into
 * the socket's slots instead of a map insert (the largest single cost of the
 * egress program), and the kernel frees them with the socket. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct socklb_dns_queries);
} dns_queries SEC(".maps");

/* A TCP socket's query slots, by socket cookie (see dns.h). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SOCKLB_DNS_SOCKS_MAX);
	__type(key, __u64);
	__type(value, struct socklb_dns_queries);
} dns_tcp_queries SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, SOCKLB_DNS_LEARNED_MAX);
	__type(key, struct socklb_dns_learned_key);
	__type(value, struct socklb_dns_learned_val);
} dns_learned SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct socklb_dns_cfg);
} dns_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SOCKLB_DNS_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} dns_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, SOCKLB_DNS_SOCKS_MAX);
	__type(key, __u64);
	__type(value, __u64);
} dns_socks SEC(".maps");

/* --- scratch --------------------------------------------------------- */

struct learn {
	__u32 addr[4];
	__u32 ttl;
	__u32 pad;
};

struct scratch {
	__u8 msg[SOCKLB_DNS_MSG_MAX];
	__u8 name[SOCKLB_DNS_NAME_MAX + 1]; /* the decoded name, lowercased wire form */
	__u8 lab[128];                      /* start of each label in name; lab[nlabels]: the root */
	/* name decoding */
	__u32 msglen;
	__u32 pos;       /* next byte to read */
	__u32 run_start; /* where the current run began: pointers must go before it */
	__u32 end;       /* the offset after the name where it stands */
	__u32 end_set;
	__u32 nlen;
	__u32 nlabels;
	__u32 hops;
	__u32 done;
	__u64 hash;
	/* pattern match */
	__u32 set;
	__u32 k;         /* the label whose suffix is hashed next (backwards) */
	__u32 pattern;
	__u32 at;        /* the next byte hashed (backwards) */
	__u64 shash;
	/* answer walk */
	__u32 rr_pos;
	__u32 rr_i;
	__u32 rr_total;
	__u32 ancount;
	__u32 err;
	__u32 chain_n;
	__u32 nlearn;
	__u32 pad2;
	__u64 chain[SOCKLB_DNS_CHAIN_MAX];
	__u32 chain_ttl[SOCKLB_DNS_CHAIN_MAX];
	struct learn learn[SOCKLB_DNS_LEARN_MAX];
	struct socklb_dns_query q; /* the outstanding query the answer is matched against */
	__u32 server[4];           /* the answer's server and port (network order) */
	__u16 port;
	__u16 pad3;
	/* the question's decode, for names pointing to it (dns_name) */
	__u64 q_hash;
	__u32 q_hops;
	__u32 q_ok;     /* set once the answer's question decoded; load_msg clears it */
	__u32 workload; /* the receiving socket's workload (0: not known here, TCP) */
	__u32 gen;      /* bumped by every load_msg(): an interrupting program's mark */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SLOTS);
	__type(key, __u32);
	__type(value, struct scratch);
} dns_scratch SEC(".maps");

struct loop_ctx {
	__u32 slot;
};

static __always_inline struct scratch *scratch(__u32 slot)
{
	return bpf_map_lookup_elem(&dns_scratch, &slot);
}

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&dns_counters, &idx);

	if (v)
		*v += n;
}

static __always_inline __u32 rd8(struct scratch *s, __u32 off)
{
	return s->msg[off & MSG_MASK];
}

static __always_inline __u32 rd16(struct scratch *s, __u32 off)
{
	return (rd8(s, off) << 8) | rd8(s, off + 1);
}

static __always_inline __u32 rd32(struct scratch *s, __u32 off)
{
	return (rd16(s, off) << 16) | rd16(s, off + 2);
}

/* --- names ----------------------------------------------------------- */

/* One label, pointer or the root per step; a label's bytes are copied,
 * lowercased and hashed by an inner bounded loop (a bpf_loop callback per
 * byte cost more than the byte's work). */
static long name_step(__u32 i, struct loop_ctx *c)
{
	struct scratch *s = scratch(c->slot);
	__u32 pos, b, n, tgt, j, ch;
	__u64 h;

	if (!s)
		return 1;
	pos = s->pos;
	n = s->nlen;
	if (pos >= s->msglen || n >= SOCKLB_DNS_NAME_MAX)
		goto bad;
	b = rd8(s, pos);
	if (b == 0) {
		s->name[n & 255] = 0;
		s->hash = s->hash * FNV_PRIME; /* ^ 0 */
		s->lab[s->nlabels & 127] = n;
		s->nlen = n + 1;
		if (!s->end_set)
			s->end = pos + 1;
		s->done = 1;
		return 1;
	}
	if ((b & 0xC0) == 0xC0) {
		if (pos + 1 >= s->msglen)
			goto bad;
		tgt = ((b & 0x3F) << 8) | rd8(s, pos + 1);
		if (tgt >= s->run_start || ++s->hops > SOCKLB_DNS_HOPS_MAX)
			goto bad;
		if (!s->end_set) {
			s->end = pos + 2;
			s->end_set = 1;
		}
		s->pos = tgt;
		s->run_start = tgt;
		return 0;
	}
	if (b & 0xC0) /* 0x40, 0x80: no such label types */
		goto bad;
	/* a label of b bytes: its length byte, its bytes and the root must fit
	 * in the name, its bytes in the message */
	if (n + b + 2 > SOCKLB_DNS_NAME_MAX || s->nlabels >= 127 || pos + b >= s->msglen)
		goto bad;
	s->lab[s->nlabels & 127] = n;
	s->nlabels++;
	s->name[n & 255] = b;
	h = (s->hash ^ b) * FNV_PRIME;
	for (j = 1; j <= 63; j++) {
		if (j > b)
			break;
		ch = rd8(s, pos + j);
		if (ch >= 'A' && ch <= 'Z')
			ch += 'a' - 'A';
		s->name[(n + j) & 255] = ch;
		h = (h ^ ch) * FNV_PRIME;
	}
	s->hash = h;
	s->nlen = n + 1 + b;
	s->pos = pos + 1 + b;
	return 0;
bad:
	s->done = 0;
	s->err = ERR_BAD;
	return 1;
}

/* Decode the name at off into s->name (s->nlen bytes, s->nlabels labels,
 * s->hash); s->end is where the name ends in the message. 0, or -1 when the
 * name is malformed or past a limit. */
__noinline int dns_name(__u32 slot, __u32 off)
{
	struct loop_ctx c = {.slot = slot};
	struct scratch *s = scratch(slot);

	if (!s)
		return -1;
	/* A name that is only a pointer to the question (offset 12; most owner
	 * names of an answer): decoding it would redo the question's decode
	 * with one hop more, so its hash and hop count give the result. Only
	 * the hash and the end are used by the answer walk (not name[]). */
	if (s->q_ok && off > 12 && off + 1 < s->msglen && rd8(s, off) == 0xC0 && rd8(s, off + 1) == 12) {
		if (s->q_hops + 1 > SOCKLB_DNS_HOPS_MAX)
			return -1;
		s->hash = s->q_hash;
		s->end = off + 2;
		s->done = 1;
		return 0;
	}
	s->pos = off;
	s->run_start = off;
	s->end = 0;
	s->end_set = 0;
	s->nlen = 0;
	s->nlabels = 0;
	s->hops = 0;
	s->done = 0;
	s->err = ERR_NONE;
	s->hash = FNV_OFFSET;
	bpf_loop(NAME_STEPS, name_step, &c, 0);
	s = scratch(slot);
	if (!s || !s->done)
		return -1;
	return 0;
}

/* One label per step, from the root to the whole name: the label's bytes
 * are hashed backwards (an inner bounded loop), then the suffix from it to
 * the end is looked up. */
static long match_step(__u32 i, struct loop_ctx *c)
{
	struct scratch *s = scratch(c->slot);
	struct socklb_dns_pattern_key key = {};
	struct socklb_dns_pattern_val *v;
	__u32 at, lo, k, j;
	__u64 h;

	if (!s)
		return 1;
	k = s->k;
	if (k > 127)
		return 1;
	lo = s->lab[k];
	at = s->at; /* the next byte to hash (backwards): the label's last */
	if (at < lo || at - lo > 63)
		return 1; /* not reached: a label is its length byte and 0..63 bytes */
	h = s->shash;
	for (j = 0; j <= 63; j++) {
		if (j > at - lo)
			break;
		h = (h ^ s->name[(at - j) & 255]) * FNV_PRIME;
	}
	s->shash = h;
	/* the suffix from label k to the end is hashed: its patterns */
	key.set = s->set;
	key.hash = h;
	v = bpf_map_lookup_elem(&dns_patterns, &key);
	if (v) {
		/* walking from the root to the whole name, a later match is a
		 * more specific one: it wins */
		if ((v->kinds & SOCKLB_DNS_ANY_DEPTH) && k >= 1)
			s->pattern = v->any_depth;
		if ((v->kinds & SOCKLB_DNS_ONE_LABEL) && k == 1)
			s->pattern = v->one_label;
		if ((v->kinds & SOCKLB_DNS_EXACT) && k == 0)
			s->pattern = v->exact;
	}
	if (k == 0 || lo == 0)
		return 1;
	s->k = k - 1;
	s->at = lo - 1;
	return 0;
}

/* The pattern id of set that the decoded name matches (0: none). */
__noinline int dns_match(__u32 slot, __u32 set)
{
	struct loop_ctx c = {.slot = slot};
	struct scratch *s = scratch(slot);

	if (!s)
		return 0;
	s->set = set;
	s->k = s->nlabels;
	s->at = s->nlen - 1; /* the root's zero byte: lab[nlabels] */
	s->pattern = 0;
	s->shash = FNV_OFFSET;
	bpf_loop(128, match_step, &c, 0); /* nlabels + 1 <= 128 */
	s = scratch(slot);
	return s ? s->pattern : 0;
}

/* --- answers ----------------------------------------------------------- */

static __always_inline int chain_index(struct scratch *s, __u64 hash)
{
	int i;

#pragma unroll
	for (i = 0; i < SOCKLB_DNS_CHAIN_MAX; i++)
		if (i < s->chain_n && s->chain[i] == hash)
			return i;
	return -1;
}

static long rr_step(__u32 i, struct loop_ctx *c)
{
	struct scratch *s = scratch(c->slot);
	__u32 p, type, cls, ttl, rdlen, rd, n, owner_ttl;
	int idx;

	if (!s)
		return 1;
	if (dns_name(c->slot, s->rr_pos) < 0)
		goto bad;
	s = scratch(c->slot);
	if (!s)
		return 1;
	p = s->end;
	if (p + 10 > s->msglen)
		goto bad;
	type = rd16(s, p);
	cls = rd16(s, p + 2);
	ttl = rd32(s, p + 4);
	rdlen = rd16(s, p + 8);
	rd = p + 10;
	if (rd + rdlen > s->msglen)
		goto bad;
	if ((type == DNS_A && rdlen != 4) || (type == DNS_AAAA && rdlen != 16))
		goto bad;
	s->rr_pos = rd + rdlen;
	s->rr_i = i + 1;
	if (i >= s->ancount || cls != DNS_IN)
		return 0;
	idx = chain_index(s, s->hash);
	if (idx < 0 || idx >= SOCKLB_DNS_CHAIN_MAX)
		return 0;
	owner_ttl = s->chain_ttl[idx];
	if (ttl > owner_ttl)
		ttl = owner_ttl;
	if (type == DNS_CNAME) {
		if (dns_name(c->slot, rd) < 0)
			goto bad;
		s = scratch(c->slot);
		if (!s)
			return 1;
		if (s->end != rd + rdlen)
			goto bad;
		n = s->chain_n;
		if (n < SOCKLB_DNS_CHAIN_MAX && chain_index(s, s->hash) < 0) {
			s->chain[n & (SOCKLB_DNS_CHAIN_MAX - 1)] = s->hash;
			s->chain_ttl[n & (SOCKLB_DNS_CHAIN_MAX - 1)] = ttl;
			s->chain_n = n + 1;
		}
		return 0;
	}
	if ((type == DNS_A && s->q.qtype == DNS_A) || (type == DNS_AAAA && s->q.qtype == DNS_AAAA)) {
		struct learn *l;

		n = s->nlearn;
		if (n >= SOCKLB_DNS_LEARN_MAX)
			return 0;
		l = &s->learn[n & (SOCKLB_DNS_LEARN_MAX - 1)];
		if (type == DNS_A) {
			l->addr[0] = 0;
			l->addr[1] = 0;
			l->addr[2] = bpf_htonl(0xffff);
			l->addr[3] = bpf_htonl(rd32(s, rd));
		} else {
			l->addr[0] = bpf_htonl(rd32(s, rd));
			l->addr[1] = bpf_htonl(rd32(s, rd + 4));
			l->addr[2] = bpf_htonl(rd32(s, rd + 8));
			l->addr[3] = bpf_htonl(rd32(s, rd + 12));
		}
		l->ttl = ttl;
		s->nlearn = n + 1;
	}
	return 0;
bad:
	s = scratch(c->slot);
	if (s)
		s->err = ERR_BAD;
	return 1;
}

/* Which slot of an entry an answer of `pattern` goes to: its own (refresh),
 * else the one expiring first (an empty slot has expiry 0: it goes first,
 * then an expired one, then the live one closest to expiring). */
static __always_inline __u32 learned_slot(const struct socklb_dns_learned_val *v, __u32 pattern)
{
	__u32 i, pick = 0;

#pragma unroll
	for (i = 0; i < SOCKLB_DNS_LEARNED_SLOTS; i++) {
		if (v->slots[i].pattern == pattern && v->slots[i].expiry_ns)
			return i;
		if (v->slots[i].expiry_ns < v->slots[pick].expiry_ns)
			pick = i;
	}
	return pick;
}

static __always_inline void teach(struct scratch *s, struct socklb_dns_cfg *cfg, __u32 i, __u64 now)
{
	struct socklb_dns_learned_key key = {};
	struct socklb_dns_learned_val val = {}, *old;
	struct socklb_dns_learned_slot *slot;
	struct learn *l;
	__u64 expiry;
	__u32 ttl, k;

	if (i >= s->nlearn)
		return;
	l = &s->learn[i & (SOCKLB_DNS_LEARN_MAX - 1)];
	key.workload = s->q.workload;
	__builtin_memcpy(key.addr, l->addr, sizeof(key.addr));
	ttl = l->ttl;
	if (ttl > cfg->ttl_cap)
		ttl = cfg->ttl_cap;
	expiry = now + (__u64)ttl * 1000000000ULL + (__u64)cfg->grace * 1000000000ULL;
	old = bpf_map_lookup_elem(&dns_learned, &key);
	if (old) {
		/* A refresh (the pattern's live slot: the common case, every
		 * answer re-teaching what the last one taught) is written in
		 * place: an update of an LRU map takes a new element. Each
		 * field is one aligned store, so a concurrent reader sees the
		 * old or the new value of each, both valid. */
		k = learned_slot(old, s->q.pattern) & (SOCKLB_DNS_LEARNED_SLOTS - 1);
		slot = &old->slots[k];
		if (slot->pattern == s->q.pattern && slot->expiry_ns) {
			if (expiry > slot->expiry_ns)
				slot->expiry_ns = expiry;
			slot->ttl = l->ttl;
			old->name_hash = s->q.name_hash;
			return;
		}
		__builtin_memcpy(&val, old, sizeof(val));
	}
	k = learned_slot(&val, s->q.pattern) & (SOCKLB_DNS_LEARNED_SLOTS - 1);
	slot = &val.slots[k];
	if (slot->pattern != s->q.pattern || expiry > slot->expiry_ns)
		slot->expiry_ns = expiry; /* a pattern's expiry only moves later */
	slot->pattern = s->q.pattern;
	slot->ttl = l->ttl;
	val.name_hash = s->q.name_hash;
	bpf_map_update_elem(&dns_learned, &key, &val, BPF_ANY);
}

/* Parse the answer in the slot's scratch (msg, msglen) to the outstanding
 * query copied into s->q and teach what it says, unless a program that
 * interrupted this one on its CPU used the slot meanwhile (gen moved: what
 * the slot holds is not this message's any more). 1: the query is answered
 * (its socket slot is freed), else 0. */
__noinline int dns_answer(__u32 slot, __u32 gen)
{
	struct loop_ctx c = {.slot = slot};
	struct scratch *s = scratch(slot);
	struct socklb_dns_cfg *cfg;
	__u32 zero = 0, flags, qd, total, p, i;
	__u64 now;

	if (!s || s->msglen < 12)
		return 0;
	flags = rd16(s, 2);
	cfg = bpf_map_lookup_elem(&dns_cfg, &zero);
	if (!cfg)
		return 0;
	now = bpf_ktime_get_boot_ns();
	if ((s->workload && s->workload != s->q.workload) ||
	    now - s->q.sent_ns > (__u64)cfg->query_window * 1000000000ULL) {
		count(SOCKLB_DNS_CNT_UNSOLICITED, 1); /* another workload's, or too late */
		return 0;
	}
	if (flags & 0x0200) { /* TC: the client retries over TCP */
		count(SOCKLB_DNS_CNT_TRUNCATED, 1);
		return 0;
	}
	qd = rd16(s, 4);
	s->ancount = rd16(s, 6);
	total = s->ancount + rd16(s, 8) + rd16(s, 10);
	if (qd != 1 || total > SOCKLB_DNS_RRS_MAX)
		goto malformed;
	if (dns_name(slot, 12) < 0)
		goto malformed;
	s = scratch(slot);
	if (!s)
		return 0;
	p = s->end;
	s->q_hash = s->hash;
	s->q_hops = s->hops;
	s->q_ok = 1;
	if (p + 4 > s->msglen || s->hash != s->q.name_hash || rd16(s, p) != s->q.qtype || rd16(s, p + 2) != DNS_IN) {
		count(SOCKLB_DNS_CNT_UNSOLICITED, 1); /* an answer to another question */
		return 0;
	}
	if (flags & 0x000F) { /* RCODE: nothing to learn, the query is answered */
		count(SOCKLB_DNS_CNT_ANSWERS, 1);
		return 1;
	}
	s->rr_pos = p + 4;
	s->rr_i = 0;
	s->rr_total = total;
	s->err = ERR_NONE;
	s->chain[0] = s->q.name_hash;
	s->chain_ttl[0] = 0xFFFFFFFF;
	s->chain_n = 1;
	s->nlearn = 0;
	if (total)
		bpf_loop(total, rr_step, &c, 0);
	s = scratch(slot);
	if (!s)
		return 0;
	if (s->err || s->rr_i != total || s->rr_pos != s->msglen)
		goto malformed;
	cfg = bpf_map_lookup_elem(&dns_cfg, &zero);
	if (!cfg || s->gen != gen)
		return 0;
	for (i = 0; i < SOCKLB_DNS_LEARN_MAX; i++)
		teach(s, cfg, i, now);
	count(SOCKLB_DNS_CNT_ANSWERS, 1);
	count(SOCKLB_DNS_CNT_LEARNED, s->nlearn);
	return 1;
malformed:
	count(SOCKLB_DNS_CNT_MALFORMED, 1);
	return 0;
}

/* The socket's slots are written by egress programs (process context, any
 * CPU) and read and freed by answers (softirq or the stream verdict), with no
 * lock: sent_ns is the slot's version. A writer clears it, writes the
 * fields, then sets it; a reader takes it, copies the slot and takes it
 * again, and uses the copy only if both are the same non-zero value (a slot
 * rewritten meanwhile is not this query any more); a slot is freed by a
 * compare-and-swap of the value read, so a query recorded into it meanwhile
 * stays. The barriers are compiler barriers: enough on x86's ordered stores
 * (the only JIT this runs on here). */
#define barrier() asm volatile("" ::: "memory")

static __always_inline int same_server(const struct socklb_dns_query *q, const __u32 *addr, __u16 port)
{
	return q->port == port && q->server[0] == addr[0] && q->server[1] == addr[1] &&
	       q->server[2] == addr[2] && q->server[3] == addr[3];
}

/* Match the answer in the slot's scratch (msg, server, port) with the
 * socket's outstanding queries `qs` (NULL: the socket has none) and teach
 * from it; the matched query's socket slot is freed once answered. */
static __always_inline void answer(struct socklb_dns_queries *qs, __u32 slot)
{
	struct socklb_dns_query *q;
	struct scratch *s = scratch(slot);
	__u32 flags, txid, i, gen;
	__u64 t;

	if (!s)
		return;
	flags = rd16(s, 2);
	if (!(flags & 0x8000) || (flags & 0x7800)) /* QR = 1, opcode QUERY */
		return;
	txid = s->msg[0] | (s->msg[1] << 8); /* as on the wire */
	gen = s->gen;
	if (qs) {
#pragma unroll
		for (i = 0; i < SOCKLB_DNS_QUERY_SLOTS; i++) {
			q = &qs->slots[i];
			t = *(volatile __u64 *)&q->sent_ns;
			if (!t || q->txid != txid || !same_server(q, s->server, s->port))
				continue;
			barrier();
			__builtin_memcpy(&s->q, q, sizeof(s->q));
			barrier();
			if (*(volatile __u64 *)&q->sent_ns != t || s->q.sent_ns != t)
				continue; /* rewritten meanwhile */
			if (dns_answer(slot, gen))
				__sync_val_compare_and_swap(&q->sent_ns, t, 0);
			return;
		}
	}
	count(SOCKLB_DNS_CNT_UNSOLICITED, 1);
}

/* The slot a query to {server, port, txid} is recorded in: the one of the
 * same key (a resent query replaces it), else the oldest (a free slot has
 * sent_ns 0, so it goes first, then an expired or the oldest live one). */
static __always_inline __u32 query_slot(struct socklb_dns_queries *qs, const __u32 *addr, __u16 port,
					__u16 txid, __u64 *taken)
{
	__u64 oldest = ~0ULL, t;
	__u32 i, k = 0;

#pragma unroll
	for (i = 0; i < SOCKLB_DNS_QUERY_SLOTS; i++) {
		struct socklb_dns_query *q = &qs->slots[i];

		t = q->sent_ns;
		if (t && q->txid == txid && same_server(q, addr, port)) {
			*taken = 0;
			return i;
		}
		if (t < oldest) {
			oldest = t;
			k = i;
		}
	}
	*taken = oldest;
	return k;
}

/* A TCP socket's query slots by cookie, created empty if need be, or NULL. */
static __always_inline struct socklb_dns_queries *tcp_queries(__u64 cookie)
{
	static const struct socklb_dns_queries empty;
	struct socklb_dns_queries *qs = bpf_map_lookup_elem(&dns_tcp_queries, &cookie);

	if (qs)
		return qs;
	bpf_map_update_elem(&dns_tcp_queries, &cookie, &empty, BPF_NOEXIST);
	return bpf_map_lookup_elem(&dns_tcp_queries, &cookie);
}

/* The socket's query slots (created when create is set), or NULL. The
 * helper returns NULL for a socket that is not a full one (it checks), so
 * no bpf_sk_fullsock(), which the stream verdict may not call. */
static __always_inline struct socklb_dns_queries *sk_queries(struct bpf_sock *sk, int create)
{
	if (!sk)
		return NULL;
	return bpf_sk_storage_get(&dns_queries, sk, 0, create ? BPF_SK_STORAGE_GET_F_CREATE : 0);
}

/* --- packets --------------------------------------------------------- */

struct l4 {
	__u32 addr[4]; /* the server: destination at egress, source at ingress */
	__u16 port;    /* the server's, network order */
	__u8 proto;
	__u8 pad;
	__u32 off;     /* start of the DNS message */
	__u32 len;     /* its length (TCP: from the prefix) */
};

static __always_inline int parse_l4(struct __sk_buff *skb, int egress, struct l4 *out)
{
	__u32 off, paylen;
	struct {
		struct iphdr ip;
		struct udphdr udp;
	} h;
	int have_udp = 0; /* h.udp holds the UDP header */

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		/* the IP header and the 8 bytes after it in one load (a UDP
		 * header when there are no IP options: most packets); a
		 * packet shorter than that, the IP header alone */
		if (bpf_skb_load_bytes(skb, 0, &h, sizeof(h)) == 0)
			have_udp = 1;
		else if (bpf_skb_load_bytes(skb, 0, &h.ip, sizeof(h.ip)) < 0)
			return -1;
		if (h.ip.ihl < 5 || (h.ip.frag_off & bpf_htons(0x3FFF)))
			return -1;
		out->addr[0] = 0;
		out->addr[1] = 0;
		out->addr[2] = bpf_htonl(0xffff);
		out->addr[3] = egress ? h.ip.daddr : h.ip.saddr;
		out->proto = h.ip.protocol;
		off = h.ip.ihl * 4;
		have_udp = have_udp && off == sizeof(h.ip);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0)
			return -1;
		__builtin_memcpy(out->addr, egress ? &ip6.daddr : &ip6.saddr, 16);
		out->proto = ip6.nexthdr;
		off = sizeof(ip6);
	} else {
		return -1;
	}
	if (out->proto == IPPROTO_UDP) {
		if (!have_udp && bpf_skb_load_bytes(skb, off, &h.udp, sizeof(h.udp)) < 0)
			return -1;
		out->port = egress ? h.udp.dest : h.udp.source;
		off += sizeof(h.udp);
		if (skb->len < off)
			return -1;
		out->off = off;
		out->len = skb->len - off;
		return 0;
	}
	if (out->proto == IPPROTO_TCP && egress) {
		struct tcphdr tcp;
		__u16 prefix;

		if (bpf_skb_load_bytes(skb, off, &tcp, sizeof(tcp)) < 0 || tcp.doff < 5)
			return -1;
		out->port = tcp.dest;
		off += tcp.doff * 4;
		if (skb->len < off + 2 + 12)
			return -1;
		paylen = skb->len - off - 2;
		if (bpf_skb_load_bytes(skb, off, &prefix, 2) < 0)
			return -1;
		/* a segment holding the whole query (a query split across
		 * segments is not recorded: nothing learned, nothing dropped) */
		if (bpf_ntohs(prefix) > paylen)
			return -1;
		out->off = off + 2;
		out->len = bpf_ntohs(prefix);
		return 0;
	}
	return -1;
}

static __always_inline struct socklb_dns_workload *skb_workload(struct __sk_buff *skb)
{
	struct socklb_dns_workload *w;
	__u64 own = bpf_skb_cgroup_id(skb), id;
	__u32 top = 0, step, lvl;

	w = bpf_map_lookup_elem(&dns_workloads, &own);
	if (w)
		return w;
	/* The deepest level with an ancestor (its own level, at most
	 * CGROUP_DEPTH - 1): a binary search, as levels below it have none
	 * (id 0). Then the ancestors nearest first, its own id skipped (looked
	 * up above): the lookups of a walk down from CGROUP_DEPTH - 1, without
	 * a helper call per empty level. */
#pragma unroll
	for (step = CGROUP_DEPTH / 2; step; step >>= 1)
		if (bpf_skb_ancestor_cgroup_id(skb, top + step))
			top += step;
	for (lvl = top; lvl >= 1 && lvl < CGROUP_DEPTH; lvl--) {
		id = bpf_skb_ancestor_cgroup_id(skb, lvl);
		if (!id || id == own)
			continue;
		w = bpf_map_lookup_elem(&dns_workloads, &id);
		if (w)
			return w;
	}
	return NULL;
}

static __always_inline int server_allowed(__u32 set, struct l4 *l)
{
	struct socklb_dns_server key = {};

	key.set = set;
	key.port = l->port;
	__builtin_memcpy(key.addr, l->addr, sizeof(key.addr));
	return bpf_map_lookup_elem(&dns_servers, &key) != NULL;
}

/* Copy the message into the slot's scratch: the scratch, or NULL. */
static __always_inline struct scratch *load_msg(struct __sk_buff *skb, __u32 slot, __u32 off, __u32 len)
{
	struct scratch *s = scratch(slot);
	__u64 n = len;
	__u32 gen;

	if (!s || len < 12 || len >= SOCKLB_DNS_MSG_MAX)
		return NULL;
	/* a no-op (len < MSG_MAX) the verifier can see on the register passed */
	asm volatile("%[n] &= %[mask]" : [n] "+r"(n) : [mask] "i"(MSG_MASK));
	if (n < 12)
		return NULL;
	gen = ++s->gen; /* before the copy: an interruption during it shows too */
	s->q_ok = 0;
	if (bpf_skb_load_bytes(skb, off, s->msg, n) < 0)
		return NULL;
	s->msglen = n;
	if (s->gen != gen)
		return NULL;
	return s;
}

SEC("cgroup_skb/egress")
int socklb_dns_egress(struct __sk_buff *skb)
{
	struct socklb_dns_workload *w;
	struct socklb_dns_queries *qs;
	struct socklb_dns_query *q;
	struct scratch *s;
	struct l4 l = {};
	__u32 flags, p, qtype, pattern, set, workload, gen, k;
	__u64 name_hash, taken;
	__u16 txid;

	if (parse_l4(skb, 1, &l) < 0 || !server_allowed(SOCKLB_DNS_SET_ANY, &l))
		return 1; /* most packets: one lookup, no workload walk */
	w = skb_workload(skb);
	if (!w)
		return 1;
	set = w->set;
	workload = w->id;
	if (!server_allowed(set, &l))
		return 1;
	s = load_msg(skb, SLOT_EGRESS, l.off, l.len);
	if (!s)
		goto ignored;
	gen = s->gen;
	flags = rd16(s, 2);
	if ((flags & 0xF800) || rd16(s, 4) != 1) /* QR = 0, opcode QUERY, one question */
		goto ignored;
	if (dns_name(SLOT_EGRESS, 12) < 0)
		goto ignored;
	s = scratch(SLOT_EGRESS);
	if (!s)
		return 1;
	p = s->end;
	if (p + 4 > s->msglen || rd16(s, p + 2) != DNS_IN)
		goto ignored;
	qtype = rd16(s, p);
	if (qtype != DNS_A && qtype != DNS_AAAA)
		goto ignored;
	name_hash = s->hash;
	pattern = dns_match(SLOT_EGRESS, set);
	if (!pattern)
		goto ignored;
	s = scratch(SLOT_EGRESS);
	if (!s)
		return 1;
	txid = s->msg[0] | (s->msg[1] << 8);
	if (s->gen != gen) /* interrupted by another egress program on this CPU */
		goto ignored;
	qs = l.proto == IPPROTO_TCP ? tcp_queries(bpf_get_socket_cookie(skb)) : sk_queries(skb->sk, 1);
	if (!qs)
		goto ignored;
	k = query_slot(qs, l.addr, l.port, txid, &taken) & (SOCKLB_DNS_QUERY_SLOTS - 1);
	q = &qs->slots[k];
	q->sent_ns = 0; /* the slot is no query while it is written (see answer()) */
	barrier();
	q->name_hash = name_hash;
	__builtin_memcpy(q->server, l.addr, sizeof(l.addr));
	q->port = l.port;
	q->txid = txid;
	q->qtype = qtype;
	q->workload = workload;
	q->set = set;
	q->pattern = pattern;
	barrier();
	*(volatile __u64 *)&q->sent_ns = bpf_ktime_get_boot_ns();
	count(SOCKLB_DNS_CNT_QUERIES, 1);
	if (taken)
		count(SOCKLB_DNS_CNT_REPLACED, 1);
	return 1;
ignored:
	count(SOCKLB_DNS_CNT_QUERIES_IGNORED, 1);
	return 1;
}

SEC("cgroup_skb/ingress")
int socklb_dns_ingress(struct __sk_buff *skb)
{
	struct socklb_dns_workload *w;
	struct scratch *s;
	struct l4 l = {};
	__u32 workload;

	if (parse_l4(skb, 0, &l) < 0 || l.proto != IPPROTO_UDP)
		return 1;
	/* Only from a server of some set: the query key below names the
	 * server, and a query is recorded only to a server of its set. */
	if (!server_allowed(SOCKLB_DNS_SET_ANY, &l))
		return 1;
	w = skb_workload(skb);
	if (!w)
		return 1;
	workload = w->id;
	s = load_msg(skb, SLOT_INGRESS, l.off, l.len);
	if (!s)
		return 1;
	s->workload = workload;
	__builtin_memcpy(s->server, l.addr, sizeof(l.addr));
	s->port = l.port;
	answer(sk_queries(skb->sk, 0), SLOT_INGRESS);
	return 1;
}

SEC("sockops")
int socklb_dns_sockops(struct bpf_sock_ops *ops)
{
	struct socklb_dns_server key = {};
	__u64 cookie;

	if (ops->op == BPF_SOCK_OPS_STATE_CB) {
		if (ops->args[1] == BPF_TCP_CLOSE) {
			cookie = bpf_get_socket_cookie(ops);
			bpf_map_delete_elem(&dns_tcp_queries, &cookie);
		}
		return 1;
	}
	if (ops->op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
		return 1;
	key.set = SOCKLB_DNS_SET_ANY;
	key.port = (__u16)(ops->remote_port >> 16); /* the network-order port sits in the upper half */
	if (ops->family == AF_INET) {
		__u32 a = ops->remote_ip4;

		/* keep clang from merging the context reads of both branches
		 * into one at a variable offset (the verifier refuses that) */
		asm volatile("" : "+r"(a));
		key.addr[2] = bpf_htonl(0xffff);
		key.addr[3] = a;
	} else if (ops->family == AF_INET6) {
		__u32 a0 = ops->remote_ip6[0], a1 = ops->remote_ip6[1], a2 = ops->remote_ip6[2],
		      a3 = ops->remote_ip6[3];

		asm volatile("" : "+r"(a0), "+r"(a1), "+r"(a2), "+r"(a3));
		key.addr[0] = a0;
		key.addr[1] = a1;
		key.addr[2] = a2;
		key.addr[3] = a3;
	} else {
		return 1;
	}
	if (!bpf_map_lookup_elem(&dns_servers, &key))
		return 1;
	cookie = bpf_get_socket_cookie(ops);
	if (bpf_sock_hash_update(ops, &dns_socks, &cookie, BPF_NOEXIST) == 0) {
		count(SOCKLB_DNS_CNT_TCP_SOCKETS, 1);
		/* its close, to delete its dns_tcp_queries entry */
		bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	}
	return 1;
}

/* Where the strparser's message starts in the skb it hands the parser and
 * the verdict: one skb may hold the end of a message and the next ones, and
 * the strparser gives each message the same skb with its offset in the
 * control block (struct strp_msg), which the BPF context does not show. Read
 * through the kernel's skb (a kfunc, kernel >= 6.3; BTF-checked loads). */
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

static __always_inline struct strp_msg *strp_msg(struct __sk_buff *skb)
{
	struct sk_buff *k = bpf_cast_to_kern_ctx(skb);

	return &((struct sk_skb_cb *)(void *)k->cb)->strp.strp;
}

/* Bytes of a message too large for the socket's receive buffer still to
 * pass through unparsed, per socket cookie (see socklb_dns_parser). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
} dns_passthru SEC(".maps");

/* The size of the message at the strparser's offset: its 2-byte prefix + 2.
 * The strparser fails the socket (EMSGSIZE) on a message larger than the
 * socket's receive buffer (an application may have made it small): such a
 * message is handed on in the pieces that have arrived, unparsed, keeping
 * count in dns_passthru so that the next message is framed where it starts.
 * Never an error, never a length past what the message holds. */
SEC("sk_skb/stream_parser")
int socklb_dns_parser(struct __sk_buff *skb)
{
	struct sk_buff *k = bpf_cast_to_kern_ctx(skb);
	__u32 off = strp_msg(skb)->offset, avail, want, rcvbuf;
	__u64 cookie;
	__u32 *left;
	__u16 prefix;

	if (off > 0xFFFF || skb->len <= off)
		return 0;
	avail = skb->len - off;
	cookie = bpf_get_socket_cookie(skb);
	left = bpf_map_lookup_elem(&dns_passthru, &cookie);
	if (left && *left) {
		want = *left < avail ? *left : avail;
		*left -= want;
		return want;
	}
	if (bpf_skb_load_bytes(skb, off, &prefix, 2) < 0)
		return 0; /* the strparser waits for more */
	want = 2 + bpf_ntohs(prefix);
	rcvbuf = BPF_CORE_READ(k, sk, sk_rcvbuf);
	if (want <= rcvbuf)
		return want;
	want -= avail;
	bpf_map_update_elem(&dns_passthru, &cookie, &want, BPF_ANY);
	return avail;
}

SEC("sk_skb/stream_verdict")
int socklb_dns_verdict(struct __sk_buff *skb)
{
	struct strp_msg *m = strp_msg(skb);
	__u32 off = m->offset, full = m->full_len;
	struct scratch *s;
	__u64 cookie;
	__u16 prefix;
	__u32 len;

	count(SOCKLB_DNS_CNT_TCP_MESSAGES, 1);
	if (off > 0xFFFF || bpf_skb_load_bytes(skb, off, &prefix, 2) < 0)
		return SK_PASS;
	len = bpf_ntohs(prefix);
	if (full != len + 2 || skb->len < off + full)
		return SK_PASS;
	s = load_msg(skb, SLOT_STREAM, off + 2, len);
	if (!s)
		return SK_PASS;
	s->workload = 0; /* the socket stands for it: its own slots */
	cookie = bpf_get_socket_cookie(skb);
	if (skb->family == AF_INET) {
		__u32 a = skb->remote_ip4;

		asm volatile("" : "+r"(a)); /* as in socklb_dns_sockops */
		s->server[2] = bpf_htonl(0xffff);
		s->server[3] = a;
	} else {
		__u32 a0 = skb->remote_ip6[0], a1 = skb->remote_ip6[1], a2 = skb->remote_ip6[2],
		      a3 = skb->remote_ip6[3];

		asm volatile("" : "+r"(a0), "+r"(a1), "+r"(a2), "+r"(a3));
		s->server[0] = a0;
		s->server[1] = a1;
		s->server[2] = a2;
		s->server[3] = a3;
	}
	s->port = (__u16)(skb->remote_port >> 16);
	answer(bpf_map_lookup_elem(&dns_tcp_queries, &cookie), SLOT_STREAM);
	return SK_PASS;
}
