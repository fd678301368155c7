// SPDX-License-Identifier: GPL-2.0
/* socklb flow reader: every live flow record (socket storage `flows`, written
 * by bpf/sock_lb.c at connect/sendmsg) as a stream of struct socklb_flow_rec.
 *
 * Two ways to find them, chosen by socklb/dataplane/flows.py from a probe:
 *   socklb_flows_map  iter/bpf_sk_storage_map over the flows map itself: one
 *                     pass over the sockets that have a record, in every
 *                     network namespace at once. A map-element iterator:
 *                     some kernels refuse those (EPERM at load, e.g. under a
 *                     BPF LSM policy).
 *   socklb_flows_tcp  iter/tcp and iter/udp, run in each network namespace:
 *   socklb_flows_udp  look up each socket's record with bpf_sk_storage_get.
 *                     Walks every socket (not only balanced ones), but loads
 *                     where map-element iterators are refused.
 * The object is loaded with only the programs of the chosen way (the others
 * are not loaded), so one refused program does not take the other down.
 *
 * Built like bpf/sock_destroy.bpf.c (clang -target bpf against a
 * bpftool-generated vmlinux.h, CO-RE, libbpf); `flows` is the agent's pinned
 * socket storage, reused, never created here.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define SOCKLB_USERSPACE
#include "socklb.h"
#include "flows.h"

#define SOCKLB_TCP_LISTEN 10

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct socklb_flow);
} flows SEC(".maps");

static __always_inline void emit(struct seq_file *seq, struct sock *sk, const struct socklb_flow *f)
{
	struct socklb_flow_rec r = {};

	/* Sockets re-connected away from a VIP keep a cleared record. */
	if (!f->frontend_id)
		return;
	r.cookie = bpf_get_socket_cookie(sk);
	r.frontend_id = f->frontend_id;
	r.backend_id = f->backend_id;
	__builtin_memcpy(r.vip, f->vip, sizeof(r.vip));
	__builtin_memcpy(r.backend_addr, f->backend_addr, sizeof(r.backend_addr));
	r.vip_port = f->vip_port;
	r.backend_port = f->backend_port;
	r.proto = f->proto;
	r.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	r.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	bpf_seq_write(seq, &r, sizeof(r));
}

SEC("iter/bpf_sk_storage_map")
int socklb_flows_map(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	struct sock *sk = ctx->sk;
	struct socklb_flow f;

	if (!sk || !ctx->value)
		return 0;
	/* The value is a read-only buffer: copy it before use. */
	__builtin_memcpy(&f, ctx->value, sizeof(f));
	emit(ctx->meta->seq, sk, &f);
	return 0;
}

SEC("iter/tcp")
int socklb_flows_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct socklb_flow *f;
	struct tcp_sock *tp;

	if (!skc)
		return 0;
	/* Time-wait and request sockets have no storage; listeners no flow. */
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp || BPF_CORE_READ(skc, skc_state) == SOCKLB_TCP_LISTEN)
		return 0;
	f = bpf_sk_storage_get(&flows, tp, 0, 0);
	if (f)
		emit(ctx->meta->seq, (struct sock *)tp, f);
	return 0;
}

SEC("iter/udp")
int socklb_flows_udp(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;
	struct socklb_flow *f;

	if (!sk)
		return 0;
	f = bpf_sk_storage_get(&flows, sk, 0, 0);
	if (f)
		emit(ctx->meta->seq, sk, f);
	return 0;
}
