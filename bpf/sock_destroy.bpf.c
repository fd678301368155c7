// SPDX-License-Identifier: GPL-2.0
/* socklb socket termination: socket iterators (iter/tcp, iter/udp) that find
 * the load-balanced sockets whose flow record points at a target and destroy
 * them with the bpf_sock_destroy() kfunc (kernel >= 6.5).
 *
 * The records, map keys and values, limits and enums shared with user space
 * are in sock_destroy.h. Built by socklb/dataplane/sockdestroy.py with clang
 * -target bpf against a vmlinux.h that bpftool generates from the running
 * kernel's BTF (CO-RE), loaded with libbpf. The `flows` map is not created
 * here: the loader reuses the agent's pinned socket storage
 * (bpf_map__reuse_fd), so the programs read the records that the
 * connect/sendmsg hooks wrote.
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
 * Build with -DSOCKLB_NO_KFUNC for kernels without bpf_sock_destroy(): the
 * object then loads anywhere iterators and bpf_get_socket_cookie() exist and
 * only supports DRY_RUN and STATS.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "iter.h"
#include "sock_destroy.h"

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

#ifndef SOCKLB_NO_KFUNC
extern int bpf_sock_destroy(struct sock_common *sk) __ksym;
#endif

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
static __always_inline int read_peer(const struct sock_common *skc, struct socklb_term_rec *r)
{
	__u16 family = skc->skc_family;

	r->family = family;
	if (family == AF_INET) {
		r->dst[2] = bpf_htonl(0xffff);
		r->dst[3] = skc->skc_daddr;
	} else if (family == AF_INET6) {
		r->dst[0] = skc->skc_v6_daddr.in6_u.u6_addr32[0];
		r->dst[1] = skc->skc_v6_daddr.in6_u.u6_addr32[1];
		r->dst[2] = skc->skc_v6_daddr.in6_u.u6_addr32[2];
		r->dst[3] = skc->skc_v6_daddr.in6_u.u6_addr32[3];
	} else {
		return 0;
	}
	r->dport = skc->skc_dport;
	return 1;
}

/* The local half of the tuple (only for sockets that matched). */
static __always_inline void read_local(const struct sock_common *skc, struct socklb_term_rec *r)
{
	if (r->family == AF_INET) {
		r->src[2] = bpf_htonl(0xffff);
		r->src[3] = skc->skc_rcv_saddr;
	} else {
		r->src[0] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[0];
		r->src[1] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[1];
		r->src[2] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[2];
		r->src[3] = skc->skc_v6_rcv_saddr.in6_u.u6_addr32[3];
	}
	r->sport = bpf_htons(skc->skc_num);
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
	struct socklb_flow *f;
	__u32 kind = 0;

	f = bpf_sk_storage_get(&flows, sk, 0, 0);
	if (!f || !f->frontend_id)
		return 0;
	/* Only a socket connected to the record's backend (see the header). */
	if (r->dport != f->backend_port || r->dst[0] != f->backend_addr[0] ||
	    r->dst[1] != f->backend_addr[1] || r->dst[2] != f->backend_addr[2] ||
	    r->dst[3] != f->backend_addr[3])
		return 0;
	tv = match_target(f, &kind);
	if (!tv)
		return 0;

	__sync_fetch_and_add(&tv->matched, 1);
	if (cfg->mode == SOCKLB_TERM_STATS)
		return 0;
	read_local(skc, r);
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
	struct socklb_term_rec r = {};
	struct socklb_term_cfg *cfg;
	struct tcp_sock *tp;
	__u32 zero = 0;

	if (!skc)
		return 0;
	cfg = bpf_map_lookup_elem(&term_cfg, &zero);
	if (!cfg)
		return 0;
	/* Listeners have no flow: skip them before anything else. */
	r.state = skc->skc_state;
	if (r.state == SOCKLB_TCP_LISTEN)
		return 0;
	if (!read_peer(skc, &r) || !dst_wanted(cfg, &r))
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
	struct udp_sock *udp_sk = ctx->udp_sk;
	struct sock *sk = (struct sock *)udp_sk;
	struct socklb_term_rec r = {};
	struct socklb_term_cfg *cfg;
	__u32 zero = 0;

	if (!sk)
		return 0;
	cfg = bpf_map_lookup_elem(&term_cfg, &zero);
	if (!cfg)
		return 0;
	/* Unconnected sockets are balanced per datagram: nothing to reset. */
	r.state = sk->__sk_common.skc_state;
	if (r.state != SOCKLB_TCP_ESTABLISHED)
		return 0;
	if (!read_peer(&sk->__sk_common, &r) || !dst_wanted(cfg, &r))
		return 0;
	return handle(ctx->meta->seq, cfg, &r, &sk->__sk_common, sk, SOCKLB_IPPROTO_UDP);
}
