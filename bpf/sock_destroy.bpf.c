// SPDX-License-Identifier: GPL-2.0
/* socklb socket termination: socket iterators (iter/tcp, iter/udp) that find
 * the load-balanced sockets whose flow record points at a target and destroy
 * them with the bpf_sock_destroy() kfunc (kernel >= 6.5).
 *
 * The records, map keys and values, limits and enums shared with user space
 * are in sock_destroy.h. Built by socklb/dataplane/sockdestroy.py with clang
 * -target bpf against a vmlinux.h that bpftool generates from the running
 * kernel's BTF (CO-RE), loaded with libbpf. The flow records' maps
 * (`flows`, `conn_flows`: bpf/iter.h) are not created here: the loader
 * reuses the agent's pinned ones (bpf_map__reuse_fd), so the programs read
 * the records that the connect/sendmsg hooks wrote.
 *
 * Targets (hash map, written by user space before each run), key
 * struct socklb_term_key {frontend_id, backend_id}:
 *   {0, B}  every flow to backend B (a backend id belongs to one frontend)
 *   {F, 0}  every flow of frontend F, whatever its backend
 *   {F, B}  flows of frontend F to backend B
 * A socket matches when its flow record is live (frontend_id != 0) and its
 * connected peer is the record's backend address and port: a connection
 * made directly to a backend address has no live record and is never
 * touched, nor is an unconnected UDP socket (each of its datagrams is
 * balanced anew, so it has nothing to reset).
 *
 * Destination prefilter (hash map `dsts`, written by user space per run,
 * used when term_cfg.flags has SOCKLB_TERM_F_DSTS): key struct
 * socklb_term_dst {peer address (16 bytes, IPv4 v4-mapped), peer port}. A
 * socket whose connected peer is not a key is skipped before its flow record
 * is looked up, so the per-socket cost of the walk over sockets that cannot
 * match (server-side peers, other services' and other tenants' connections)
 * is a few loads and one hash lookup. Without the flag every socket's
 * storage is looked up, as the targets alone decide.
 *
 * Mode (array map `term_cfg`, one entry):
 *   DESTROY  bpf_sock_destroy() each match, emit a record with the result
 *   DRY_RUN  emit a record per match, destroy nothing (also what the netlink
 *            fallback uses to find the sockets)
 *   STATS    only count matches in the target's value, emit nothing
 *
 * Socket programs (socklb_term_sock_tcp / _udp): the sockets of workloads,
 * whatever they are connected to, for policy (a policy change terminates
 * the open sockets its new verdict denies; user space judges them). They
 * walk TCP sockets in every state but LISTEN (time-wait and request
 * sockets are skipped, as above) and connected UDP sockets, and select:
 *   - by cgroup: the socket's cgroup v2 (sk->sk_cgrp_data.cgroup, the cgroup
 *     of the process that created it; its id is the directory's inode) is a
 *     key of `cgroups` (hash, u64 -> u8, written per run), or any cgroup with
 *     SOCKLB_TERM_F_ALL_CGROUPS;
 *   - by cookie, with SOCKLB_TERM_F_COOKIES: the socket's cookie is a key of
 *     `cookies` (the sockets a listing found and user space condemned).
 * Each selected socket gives a struct socklb_term_sock_rec: tuple, state,
 * cgroup and, when its flow record is live and it is connected to the
 * record's backend, the flow's frontend, backend and VIP (the application's
 * destination). Mode DESTROY destroys only sockets selected by cookie (a
 * listing never destroys, whatever the mode); any other mode emits records.
 * Cookies are never reused while the machine runs, so a socket condemned by
 * a listing is never confused with a later one.
 *
 * Judge programs (socklb_term_judge_tcp / _udp): the socket programs'
 * walk with the policy decision made here, in one walk, for a policy change
 * the node has applied. `judge_sets` (hash, cgroup id -> the kernel id of
 * the policy set its workload has in the applied state, written per run)
 * selects the sockets, as `cgroups` does; each is judged as the connect
 * hook judges a destination (bpf/policy_verdict.h, the same body): the
 * destination as the application addressed it (the live flow's VIP and
 * port, else the peer), its services master (the agent's pinned
 * `services`; a placeholder master counts as no frontend) by the set's
 * verdict in `policy_frontends`, anything else by the longest prefix of
 * its family in `policy_prefixes`, deny winning; a destination neither
 * decides is kept when the cgroup's workload (`judge_workloads`, cgroup id
 * -> its workload id, written per run for sets with FQDN rules) learned it
 * (`dns_learned`) through a pattern whose rules in the set
 * (`policy_fqdns`) allow the port, none denying, whether or not the slot
 * expired (docs/fqdn.md, "Terminations"); nothing = denied. Only
 * the denied emit a record (struct socklb_term_sock_rec, as the socket
 * programs'); mode DESTROY destroys them first (result in the record), any
 * other mode only lists them (the netlink way, which destroys them by
 * 5-tuple). `judge_stats` counts the sockets judged and denied. The
 * pinned maps are reused (bpf_map__reuse_fd) like `flows`; an object
 * loaded without them gets one-entry maps of its own, and the judge
 * programs are not loaded then.
 *
 * Build with -DSOCKLB_NO_KFUNC for kernels without bpf_sock_destroy(): the
 * object then loads anywhere iterators and bpf_get_socket_cookie() exist and
 * only supports DRY_RUN and STATS (the socket programs only list).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "iter.h"
#include "sock_destroy.h"
#include "dns.h"

#define SOCKLB_TCP_ESTABLISHED 1 /* also a connected UDP socket's state */

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_TERM_TARGETS_MAX);
	__type(key, struct socklb_term_key);
	__type(value, struct socklb_term_val);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_TERM_DSTS_MAX);
	__type(key, struct socklb_term_dst);
	__type(value, __u8);
} dsts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct socklb_term_cfg);
} term_cfg SEC(".maps");

/* Empty but for a run of the socket programs: not preallocated. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_TERM_CGROUPS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u8);
} cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_TERM_COOKIES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u8);
} cookies SEC(".maps");

/* The judge programs' own maps. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_TERM_CGROUPS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u32);
} judge_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct socklb_judge_stats);
} judge_stats SEC(".maps");

/* cgroup id -> the workload id `dns_learned` is keyed by, for the cgroups
 * of workloads whose set has FQDN rules (the others: no entry). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_TERM_CGROUPS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u32);
} judge_workloads SEC(".maps");

/* The agent's pinned policy maps (and the DNS learner's dns_learned),
 * reused by the loader (bpf_map__reuse_fd takes the pinned map's type,
 * size and flags); the definitions here only serve an object loaded
 * without them (the judge programs are then not loaded). */
#define SOCKLB_AGENT_MAP(name, map_type, flags, key_type, value_type) \
	struct {                                                      \
		__uint(type, map_type);                               \
		__uint(max_entries, 1);                               \
		__uint(map_flags, flags);                             \
		__type(key, key_type);                                \
		__type(value, value_type);                            \
	} name SEC(".maps")

SOCKLB_AGENT_MAP(services, BPF_MAP_TYPE_HASH, BPF_F_NO_PREALLOC, struct socklb_svc_key, struct socklb_svc_val);
SOCKLB_AGENT_MAP(policy_frontends, BPF_MAP_TYPE_HASH, BPF_F_NO_PREALLOC, struct socklb_policy_fe_key,
		 struct socklb_policy_verdict);
SOCKLB_AGENT_MAP(policy_prefixes, BPF_MAP_TYPE_LPM_TRIE, BPF_F_NO_PREALLOC, struct socklb_policy_prefix_key,
		 struct socklb_policy_rules);
SOCKLB_AGENT_MAP(policy_fqdns, BPF_MAP_TYPE_HASH, BPF_F_NO_PREALLOC, struct socklb_policy_fqdn_key,
		 struct socklb_policy_rules);
SOCKLB_AGENT_MAP(dns_learned, BPF_MAP_TYPE_LRU_HASH, 0, struct socklb_dns_learned_key,
		 struct socklb_dns_learned_val);

#define SOCKLB_POLICY_FRONTEND(k) bpf_map_lookup_elem(&policy_frontends, (k))
#define SOCKLB_POLICY_PREFIX(k) bpf_map_lookup_elem(&policy_prefixes, (k))
#include "policy_verdict.h"

#ifndef SOCKLB_NO_KFUNC
extern int bpf_sock_destroy(struct sock_common *sk) __ksym;
#endif

/* What this read does (user space writes it before each run). */
static __always_inline struct socklb_term_cfg *run_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&term_cfg, &zero);
}

static __always_inline struct socklb_term_val *
match_target(const struct socklb_flow *f, __u32 *kind)
{
	struct socklb_term_key k = { .frontend_id = f->frontend_id, .backend_id = f->backend_id };
	struct socklb_term_val *v;

	v = bpf_map_lookup_elem(&targets, &k);
	if (v) {
		*kind = SOCKLB_TERM_KIND_EXACT;
		return v;
	}
	k.frontend_id = 0;
	v = bpf_map_lookup_elem(&targets, &k);
	if (v) {
		*kind = SOCKLB_TERM_KIND_BACKEND;
		return v;
	}
	k.frontend_id = f->frontend_id;
	k.backend_id = 0;
	v = bpf_map_lookup_elem(&targets, &k);
	if (v)
		*kind = SOCKLB_TERM_KIND_FRONTEND;
	return v;
}

/* The peer (family, address, port) from the socket's common part: direct
 * loads (the iterators' socket pointers are trusted BTF pointers), valid for
 * full, time-wait and request sockets alike. 0 if not IPv4 / IPv6. */
static __always_inline int read_peer(const struct sock_common *skc, __u16 *family, __u32 *dst, __u16 *dport)
{
	__u16 fam = skc->skc_family;

	*family = fam;
	if (fam == AF_INET) {
		dst[2] = bpf_htonl(0xffff);
		dst[3] = skc->skc_daddr;
	} else if (fam == AF_INET6) {
		dst[0] = skc->skc_v6_daddr.in6_u.u6_addr32[0];
		dst[1] = skc->skc_v6_daddr.in6_u.u6_addr32[1];
		dst[2] = skc->skc_v6_daddr.in6_u.u6_addr32[2];
		dst[3] = skc->skc_v6_daddr.in6_u.u6_addr32[3];
	} else {
		return 0;
	}
	*dport = skc->skc_dport;
	return 1;
}

/* The local half of the tuple (only for sockets that are reported). */
static __always_inline void read_local(const struct sock_common *skc, __u16 family, __u32 *src, __u16 *sport)
{
	if (family == AF_INET) {
		src[2] = bpf_htonl(0xffff);
		src[3] = skc->skc_rcv_saddr;
	} else {
		src[0] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[0];
		src[1] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[1];
		src[2] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[2];
		src[3] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[3];
	}
	*sport = bpf_htons(skc->skc_num);
}

/* The socket's live flow record, copied into *f (flow_of, bpf/iter.h):
 * frontend_id set, and the socket connected to the record's backend (a
 * socket re-connected directly elsewhere keeps a stale record). f, or NULL. */
static __always_inline struct socklb_flow *live_flow(struct sock *sk, const __u32 *dst, __u16 dport,
						     struct socklb_flow *f)
{
	if (!flow_of(sk, f))
		return NULL;
	if (dport != f->backend_port || dst[0] != f->backend_addr[0] || dst[1] != f->backend_addr[1] ||
	    dst[2] != f->backend_addr[2] || dst[3] != f->backend_addr[3])
		return NULL;
	return f;
}

/* Whether the peer in r passes the `dsts` prefilter (when enabled). */
static __always_inline int dst_wanted(const struct socklb_term_cfg *cfg, const struct socklb_term_rec *r)
{
	struct socklb_term_dst k;

	if (!(cfg->flags & SOCKLB_TERM_F_DSTS))
		return 1;
	k.addr[0] = r->dst[0];
	k.addr[1] = r->dst[1];
	k.addr[2] = r->dst[2];
	k.addr[3] = r->dst[3];
	k.port = r->dport;
	k.pad = 0;
	return bpf_map_lookup_elem(&dsts, &k) != NULL;
}

/* r holds the peer (read_peer) and the state; the peer passed the prefilter. */
static __always_inline int handle(struct seq_file *seq, const struct socklb_term_cfg *cfg,
				  struct socklb_term_rec *r, struct sock_common *skc,
				  struct sock *sk, __u8 proto)
{
	struct socklb_term_val *tv;
	struct socklb_flow *f, fbuf;
	__u32 kind = 0;

	/* Only a socket connected to the record's backend (see the header). */
	f = live_flow(sk, r->dst, r->dport, &fbuf);
	if (!f)
		return 0;
	tv = match_target(f, &kind);
	if (!tv)
		return 0;

	__sync_fetch_and_add(&tv->matched, 1);
	if (cfg->mode == SOCKLB_TERM_STATS)
		return 0;
	read_local(skc, r->family, r->src, &r->sport);
	r->cookie = bpf_get_socket_cookie(skc);
	r->proto = proto;
	r->frontend_id = f->frontend_id;
	r->backend_id = f->backend_id;
	r->target_kind = kind;
	r->result = SOCKLB_TERM_NOT_TRIED;

#ifndef SOCKLB_NO_KFUNC
	if (cfg->mode == SOCKLB_TERM_DESTROY) {
		r->result = bpf_sock_destroy(skc);
		if (r->result == 0)
			__sync_fetch_and_add(&tv->destroyed, 1);
		else
			__sync_fetch_and_add(&tv->failed, 1);
	}
#endif
	bpf_seq_write(seq, r, sizeof(*r));
	return 0;
}

SEC("iter/tcp")
int socklb_term_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct socklb_term_cfg *cfg = run_cfg();
	struct socklb_term_rec r = {};
	struct tcp_sock *tp;

	if (!skc || !cfg)
		return 0;
	/* Listeners have no flow: skip them before anything else. */
	r.state = skc->skc_state;
	if (r.state == SOCKLB_TCP_LISTEN)
		return 0;
	if (!read_peer(skc, &r.family, r.dst, &r.dport) || !dst_wanted(cfg, &r))
		return 0;
	/* Time-wait and request sockets have no storage. */
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	return handle(ctx->meta->seq, cfg, &r, skc, (struct sock *)tp, SOCKLB_IPPROTO_TCP);
}

SEC("iter/udp")
int socklb_term_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;
	struct socklb_term_cfg *cfg = run_cfg();
	struct socklb_term_rec r = {};

	if (!sk || !cfg)
		return 0;
	/* Unconnected sockets are balanced per datagram: nothing to reset. */
	r.state = sk->__sk_common.skc_state;
	if (r.state != SOCKLB_TCP_ESTABLISHED)
		return 0;
	if (!read_peer(&sk->__sk_common, &r.family, r.dst, &r.dport) || !dst_wanted(cfg, &r))
		return 0;
	return handle(ctx->meta->seq, cfg, &r, &sk->__sk_common, sk, SOCKLB_IPPROTO_UDP);
}

/* --- the socket programs: by cgroup, by cookie ------------------------------ */

/* The socket's cgroup v2 id: the cgroup of the process that created it.
 * Direct loads (the iterator's socket is a BTF pointer; the JIT makes the
 * walk to the cgroup and its kernfs node faulting-safe loads), not the
 * probe-read helper: this runs for every socket of the table. */
static __always_inline __u64 sock_cgroup_id(struct sock *sk)
{
	struct cgroup *cg = sk->sk_cgrp_data.cgroup;
	struct kernfs_node *kn;

	if (!cg)
		return 0;
	kn = cg->kn;
	return kn ? kn->id : 0;
}

/* Whether the socket is selected (see the header); fills the cookie and
 * cgroup of r, the cheaper test first. */
static __always_inline int sock_selected(const struct socklb_term_cfg *cfg, struct socklb_term_sock_rec *r,
					 struct sock_common *skc, struct sock *sk)
{
	if (cfg->flags & SOCKLB_TERM_F_COOKIES) {
		r->cookie = bpf_get_socket_cookie(skc);
		if (!bpf_map_lookup_elem(&cookies, &r->cookie))
			return 0;
		r->cgroup_id = sock_cgroup_id(sk);
		return 1;
	}
	r->cgroup_id = sock_cgroup_id(sk);
	if (!(cfg->flags & SOCKLB_TERM_F_ALL_CGROUPS) && !bpf_map_lookup_elem(&cgroups, &r->cgroup_id))
		return 0;
	r->cookie = bpf_get_socket_cookie(skc);
	return 1;
}

/* The live flow f of a selected socket, in its record. */
static __always_inline void rec_flow(struct socklb_term_sock_rec *r, const struct socklb_flow *f)
{
	r->frontend_id = f->frontend_id;
	r->backend_id = f->backend_id;
	r->vip[0] = f->vip[0];
	r->vip[1] = f->vip[1];
	r->vip[2] = f->vip[2];
	r->vip[3] = f->vip[3];
	r->vip_port = f->vip_port;
}

static __always_inline int sock_handle(struct seq_file *seq, const struct socklb_term_cfg *cfg,
				       struct sock_common *skc, struct sock *sk, __u8 proto, __u8 state)
{
	struct socklb_term_sock_rec r = {};
	struct socklb_flow *f, fbuf;

	if (!sock_selected(cfg, &r, skc, sk))
		return 0;
	if (!read_peer(skc, &r.family, r.dst, &r.dport))
		return 0;
	read_local(skc, r.family, r.src, &r.sport);
	r.proto = proto;
	r.state = state;
	f = live_flow(sk, r.dst, r.dport, &fbuf);
	if (f)
		rec_flow(&r, f);
	r.result = SOCKLB_TERM_NOT_TRIED;
#ifndef SOCKLB_NO_KFUNC
	/* Only what user space condemned by cookie: a listing never destroys. */
	if (cfg->mode == SOCKLB_TERM_DESTROY && (cfg->flags & SOCKLB_TERM_F_COOKIES))
		r.result = bpf_sock_destroy(skc);
#endif
	bpf_seq_write(seq, &r, sizeof(r));
	return 0;
}

/* --- the judge programs: the policy decided here ----------------------------- */

/* An open socket to a destination no frontend or prefix decides: kept when
 * its workload learned the address through a pattern the set still has
 * whose rules allow the port, none denying (deny wins, as in the hook),
 * expired or not: a connection open when the TTL ran out stays open. The
 * user-space judge's rule (socklb/lb/policy_eval.py). */
static __always_inline int fqdn_keeps(__u32 set, __u64 cgroup_id, const struct socklb_svc_key *key)
{
	struct socklb_dns_learned_key lk = {};
	struct socklb_policy_fqdn_key fk = { .set = set };
	struct socklb_dns_learned_val *lv;
	struct socklb_policy_rules *r;
	__u32 *wid;
	int allowed = 0, i, d;

	wid = bpf_map_lookup_elem(&judge_workloads, &cgroup_id);
	if (!wid)
		return 0;
	lk.workload = *wid;
	__builtin_memcpy(lk.addr, key->addr, sizeof(lk.addr));
	lv = bpf_map_lookup_elem(&dns_learned, &lk);
	if (!lv)
		return 0;
	for (i = 0; i < SOCKLB_DNS_LEARNED_SLOTS; i++) {
		fk.pattern = lv->slots[i].pattern;
		if (!fk.pattern)
			continue;
		r = bpf_map_lookup_elem(&policy_fqdns, &fk);
		if (!r)
			continue;
		d = policy_rules_decide(r, bpf_ntohs(key->port), key->proto);
		if (d < 0)
			return 0;
		allowed |= d;
	}
	return allowed;
}

static __always_inline void judge_count(int denied)
{
	__u32 zero = 0;
	struct socklb_judge_stats *st = bpf_map_lookup_elem(&judge_stats, &zero);

	if (!st)
		return;
	if (denied)
		__sync_fetch_and_add(&st->denied, 1);
	else
		__sync_fetch_and_add(&st->judged, 1);
}

static __always_inline int judge_handle(struct seq_file *seq, const struct socklb_term_cfg *cfg,
					struct sock_common *skc, struct sock *sk, __u8 proto, __u8 state)
{
	struct socklb_term_sock_rec r = {};
	struct socklb_svc_key key = {};
	const struct socklb_svc_val *master;
	struct socklb_flow *f, fbuf;
	__u32 *set;
	int verdict;

	r.cgroup_id = sock_cgroup_id(sk);
	set = bpf_map_lookup_elem(&judge_sets, &r.cgroup_id);
	if (!set)
		return 0;
	if (!read_peer(skc, &r.family, r.dst, &r.dport))
		return 0;
	judge_count(0);
	/* The destination as the application addressed it: the flow's VIP, else the peer. */
	f = live_flow(sk, r.dst, r.dport, &fbuf);
	if (f)
		rec_flow(&r, f);
	__builtin_memcpy(key.addr, f ? r.vip : r.dst, sizeof(key.addr));
	key.port = f ? r.vip_port : r.dport;
	key.proto = proto;
	master = policy_frontend_of(bpf_map_lookup_elem(&services, &key));
	/* An iterator's address is always 16 bytes, IPv4 v4-mapped: v6 = 1
	 * takes the family from the address. */
	verdict = policy_decide(*set, &key, master, 1);
	if (verdict > 0 || (verdict == 0 && fqdn_keeps(*set, r.cgroup_id, &key)))
		return 0;
	judge_count(1);
	read_local(skc, r.family, r.src, &r.sport);
	r.cookie = bpf_get_socket_cookie(skc);
	r.proto = proto;
	r.state = state;
	r.result = SOCKLB_TERM_NOT_TRIED;
#ifndef SOCKLB_NO_KFUNC
	if (cfg->mode == SOCKLB_TERM_DESTROY)
		r.result = bpf_sock_destroy(skc);
#endif
	bpf_seq_write(seq, &r, sizeof(r));
	return 0;
}

/* The TCP and UDP sockets the socket and judge programs look at (judge: a
 * constant after inlining, which handler). */
static __always_inline int sock_tcp(struct bpf_iter__tcp *ctx, const int judge)
{
	struct sock_common *skc = ctx->sk_common;
	struct socklb_term_cfg *cfg = run_cfg();
	struct tcp_sock *tp;
	__u8 state;

	if (!skc || !cfg)
		return 0;
	state = skc->skc_state;
	if (state == SOCKLB_TCP_LISTEN)
		return 0;
	/* Time-wait and request sockets: no cgroup, nothing to abort. */
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	if (judge)
		return judge_handle(ctx->meta->seq, cfg, skc, (struct sock *)tp, SOCKLB_IPPROTO_TCP, state);
	return sock_handle(ctx->meta->seq, cfg, skc, (struct sock *)tp, SOCKLB_IPPROTO_TCP, state);
}

static __always_inline int sock_udp(struct bpf_iter__udp *ctx, const int judge)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;
	struct socklb_term_cfg *cfg = run_cfg();

	if (!sk || !cfg)
		return 0;
	/* An unconnected socket has no destination to judge: each datagram is checked at sendmsg(). */
	if (sk->__sk_common.skc_state != SOCKLB_TCP_ESTABLISHED)
		return 0;
	if (judge)
		return judge_handle(ctx->meta->seq, cfg, &sk->__sk_common, sk, SOCKLB_IPPROTO_UDP,
				    SOCKLB_TCP_ESTABLISHED);
	return sock_handle(ctx->meta->seq, cfg, &sk->__sk_common, sk, SOCKLB_IPPROTO_UDP, SOCKLB_TCP_ESTABLISHED);
}

SEC("iter/tcp")
int socklb_term_sock_tcp(struct bpf_iter__tcp *ctx) { return sock_tcp(ctx, 0); }

SEC("iter/udp")
int socklb_term_sock_udp(struct bpf_iter__udp *ctx) { return sock_udp(ctx, 0); }

/* The judge programs (see the header). */
SEC("iter/tcp")
int socklb_term_judge_tcp(struct bpf_iter__tcp *ctx) { return sock_tcp(ctx, 1); }

SEC("iter/udp")
int socklb_term_judge_udp(struct bpf_iter__udp *ctx) { return sock_udp(ctx, 1); }
