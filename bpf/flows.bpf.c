// SPDX-License-Identifier: GPL-2.0
/* socklb flow reader: every live flow record (socklb.h, "The flow record":
 * the conn_flows slots and the socket storage `flows`, written by
 * bpf/sock_lb.c at connect/sendmsg), either emitted as a stream of struct
 * socklb_flow_rec (a dump) or counted per (frontend, backend) into the
 * flow_counts map (what a statistics report needs).
 *
 * Two ways to find the records, chosen by socklb/dataplane/flows.py from a
 * probe:
 *   *_map      iter/bpf_sk_storage_map over the flows map itself, and
 *   *_slots    iter/bpf_map_elem over conn_flows: one pass each over the
 *              records, in every network namespace at once. Map-element
 *              iterators: some kernels refuse those (EPERM at load, e.g.
 *              under a BPF LSM policy). A slot has no socket at hand: its
 *              record's state and family are 0 (unknown).
 *   *_tcp/udp  iter/tcp and iter/udp, run in each network namespace: look
 *              up each socket's record (flow_of, bpf/iter.h). Walks every
 *              socket (not only balanced ones), but loads where map-element
 *              iterators are refused.
 * The object is loaded with only the programs of the chosen way (the others
 * are not loaded), so one refused program does not take the other down.
 * Each way's programs are generated from one body per iterator type, with
 * `counting` a constant the compiler folds.
 *
 * Built like bpf/sock_destroy.bpf.c (clang -target bpf against a
 * bpftool-generated vmlinux.h, CO-RE, libbpf); `flows` and `conn_flows` are
 * the agent's pinned maps, reused, never created here.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "iter.h"
#include "flows.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SOCKLB_FLOW_COUNTS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct socklb_flow_count_key);
	__type(value, __u64);
} flow_counts SEC(".maps");

/* sk NULL: a slot's record, whose socket is not at hand (cookie from the slot). */
static __always_inline void emit(struct seq_file *seq, struct sock *sk, __u64 cookie, const struct socklb_flow *f)
{
	struct socklb_flow_rec r = {};

	r.cookie = sk ? bpf_get_socket_cookie(sk) : cookie;
	r.frontend_id = f->frontend_id;
	r.backend_id = f->backend_id;
	__builtin_memcpy(r.vip, f->vip, sizeof(r.vip));
	__builtin_memcpy(r.backend_addr, f->backend_addr, sizeof(r.backend_addr));
	r.vip_port = f->vip_port;
	r.backend_port = f->backend_port;
	r.proto = f->proto;
	if (sk) {
		r.state = BPF_CORE_READ(sk, __sk_common.skc_state);
		r.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	}
	bpf_seq_write(seq, &r, sizeof(r));
}

static __always_inline void count(const struct socklb_flow *f)
{
	struct socklb_flow_count_key k = {};
	__u64 one = 1, *n;

	k.frontend_id = f->frontend_id;
	__builtin_memcpy(k.backend_addr, f->backend_addr, sizeof(k.backend_addr));
	k.backend_port = f->backend_port;
	n = bpf_map_lookup_elem(&flow_counts, &k);
	if (n)
		__sync_fetch_and_add(n, 1);
	else
		bpf_map_update_elem(&flow_counts, &k, &one, BPF_NOEXIST);
}

static __always_inline void visit(struct seq_file *seq, struct sock *sk, __u64 cookie,
				  const struct socklb_flow *f, const int counting)
{
	/* Sockets re-connected away from a VIP keep a cleared record. */
	if (!f->frontend_id)
		return;
	if (counting)
		count(f);
	else
		emit(seq, sk, cookie, f);
}

static __always_inline int on_map(struct bpf_iter__bpf_sk_storage_map *ctx, const int counting)
{
	struct sock *sk = ctx->sk;
	struct socklb_sk_flow f;

	if (!sk || !ctx->value)
		return 0;
	/* The value is a read-only buffer: copy it before use. A socket whose
	 * record is in a slot has this one cleared (socklb.h). */
	__builtin_memcpy(&f, ctx->value, sizeof(f));
	visit(ctx->meta->seq, sk, 0, &f.flow, counting);
	return 0;
}

static __always_inline int on_slot(struct bpf_iter__bpf_map_elem *ctx, const int counting)
{
	struct socklb_conn_slot s;

	if (!ctx->value)
		return 0;
	__builtin_memcpy(&s, ctx->value, sizeof(s));
	if (s.cookie)
		visit(ctx->meta->seq, NULL, s.cookie, &s.flow, counting);
	return 0;
}

static __always_inline int on_tcp(struct bpf_iter__tcp *ctx, const int counting)
{
	struct sock_common *skc = ctx->sk_common;
	struct socklb_flow f;
	struct tcp_sock *tp;

	if (!skc)
		return 0;
	tp = flow_tcp_sock(skc);
	if (!tp)
		return 0;
	if (flow_of((struct sock *)tp, &f))
		visit(ctx->meta->seq, (struct sock *)tp, 0, &f, counting);
	return 0;
}

static __always_inline int on_udp(struct bpf_iter__udp *ctx, const int counting)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;
	struct socklb_flow f;

	if (!sk)
		return 0;
	if (flow_of(sk, &f))
		visit(ctx->meta->seq, sk, 0, &f, counting);
	return 0;
}

SEC("iter/bpf_sk_storage_map")
int socklb_flows_map(struct bpf_iter__bpf_sk_storage_map *ctx) { return on_map(ctx, 0); }
SEC("iter/bpf_sk_storage_map")
int socklb_counts_map(struct bpf_iter__bpf_sk_storage_map *ctx) { return on_map(ctx, 1); }
SEC("iter/bpf_map_elem")
int socklb_flows_slots(struct bpf_iter__bpf_map_elem *ctx) { return on_slot(ctx, 0); }
SEC("iter/bpf_map_elem")
int socklb_counts_slots(struct bpf_iter__bpf_map_elem *ctx) { return on_slot(ctx, 1); }
SEC("iter/tcp")
int socklb_flows_tcp(struct bpf_iter__tcp *ctx) { return on_tcp(ctx, 0); }
SEC("iter/tcp")
int socklb_counts_tcp(struct bpf_iter__tcp *ctx) { return on_tcp(ctx, 1); }
SEC("iter/udp")
int socklb_flows_udp(struct bpf_iter__udp *ctx) { return on_udp(ctx, 0); }
SEC("iter/udp")
int socklb_counts_udp(struct bpf_iter__udp *ctx) { return on_udp(ctx, 1); }
