// SPDX-License-Identifier: GPL-2.0
/* socklb socket statistics: socket iterators (iter/tcp, iter/udp) that emit
 * one fixed-size record per load-balanced socket, read by
 * socklb/dataplane/sockstats.py in every network namespace and summed there
 * per service and backend. The record is struct socklb_stat_rec of
 * sock_stats.h.
 *
 * Built and loaded like bpf/sock_destroy.bpf.c (clang -target bpf against a
 * bpftool-generated vmlinux.h, CO-RE, libbpf): the flow records' maps
 * (`flows`, `conn_flows`: bpf/iter.h) are the agent's pinned ones, reused
 * (bpf_map__reuse_fd), never created here.
 *
 * What is counted: the sockets termination would match, i.e. a live flow
 * record (frontend_id != 0) on a socket whose connected peer is the record's
 * backend address and port. Connections made directly to a backend address
 * have no live record; unconnected UDP sockets have no peer; time-wait and
 * request sockets have no storage; listeners no flow.
 *
 * Per record: ids from the flow record, skc_state, family, the socket cookie,
 * and for TCP the payload acknowledged by the peer ("bytes sent") and the
 * payload received in order, srtt_us >> 3 (microseconds) and total_retrans;
 * for UDP the socket's receive drops (sk_drops, and on kernels >= 6.18 the
 * per-NUMA drop counters that udp keeps instead).
 *
 * Payload: tcp_sock.bytes_acked and bytes_received count sequence space
 * (RFC 4898, what `ss -ti` shows), so they include the SYN and FIN: an
 * active opener's bytes_acked is 1 once its SYN is acked (so whenever it is
 * not 0) and 1 more once its FIN is acked (FIN_WAIT2: later states are
 * time-wait sockets, not seen here); bytes_received includes the peer's FIN
 * once it arrived in order (CLOSE_WAIT, LAST_ACK, CLOSING). The SYN-ACK's
 * SYN is not counted. Both are taken out here. (Load-balanced sockets are
 * always active openers: the flow record is written at connect().)
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "iter.h"
#include "sock_stats.h"

#define SOCKLB_TCP_FIN_WAIT2 5
#define SOCKLB_TCP_CLOSE_WAIT 8
#define SOCKLB_TCP_LAST_ACK 9
#define SOCKLB_TCP_CLOSING 11

char LICENSE[] SEC("license") = "GPL";

/* CO-RE flavours (matched by name, so they build against any vmlinux.h):
 * since 6.18 udp counts receive drops in per-NUMA counters that
 * sk_drop_counters points to, next to the plain sk_drops. */
struct numa_drop_counters___socklb {
	atomic_t drops0;
	atomic_t drops1;
} __attribute__((preserve_access_index));

struct sock___socklb {
	atomic_t sk_drops;
	struct numa_drop_counters___socklb *sk_drop_counters;
} __attribute__((preserve_access_index));

static __always_inline __u32 read_drops(struct sock *sk)
{
	struct sock___socklb *s = (void *)sk;
	struct numa_drop_counters___socklb *ndc;
	__u32 drops = BPF_CORE_READ(s, sk_drops.counter);

	if (bpf_core_field_exists(s->sk_drop_counters)) {
		ndc = BPF_CORE_READ(s, sk_drop_counters);
		if (ndc)
			drops += BPF_CORE_READ(ndc, drops0.counter) + BPF_CORE_READ(ndc, drops1.counter);
	}
	return drops;
}

/* 1 for a socket connected to its flow record's backend (r then holds the
 * flow's ids), else 0. */
static __always_inline int counted_flow(struct sock_common *skc, struct sock *sk, struct socklb_stat_rec *r)
{
	struct socklb_flow fbuf, *f = &fbuf;
	__u32 dst[4];
	__u16 family;

	if (!flow_of(sk, f))
		return 0;
	family = BPF_CORE_READ(skc, skc_family);
	if (family == AF_INET) {
		dst[0] = 0;
		dst[1] = 0;
		dst[2] = bpf_htonl(0xffff);
		dst[3] = BPF_CORE_READ(skc, skc_daddr);
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&dst, skc, skc_v6_daddr.in6_u.u6_addr32);
	} else {
		return 0;
	}
	if (BPF_CORE_READ(skc, skc_dport) != f->backend_port || dst[0] != f->backend_addr[0] ||
	    dst[1] != f->backend_addr[1] || dst[2] != f->backend_addr[2] ||
	    dst[3] != f->backend_addr[3])
		return 0;
	r->family = family;
	r->state = BPF_CORE_READ(skc, skc_state);
	r->frontend_id = f->frontend_id;
	r->backend_id = f->backend_id;
	r->cookie = bpf_get_socket_cookie(skc);
	return 1;
}

SEC("iter/tcp")
int socklb_stats_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct socklb_stat_rec r = {};
	__u64 acked, received;
	struct tcp_sock *tp;

	if (!skc)
		return 0;
	tp = flow_tcp_sock(skc);
	if (!tp)
		return 0;
	if (!counted_flow(skc, (struct sock *)tp, &r))
		return 0;
	r.proto = SOCKLB_IPPROTO_TCP;
	acked = BPF_CORE_READ(tp, bytes_acked);
	received = BPF_CORE_READ(tp, bytes_received);
	if (acked)
		acked--; /* our SYN */
	if (acked && r.state == SOCKLB_TCP_FIN_WAIT2)
		acked--; /* our FIN */
	if (received && (r.state == SOCKLB_TCP_CLOSE_WAIT || r.state == SOCKLB_TCP_LAST_ACK ||
			 r.state == SOCKLB_TCP_CLOSING))
		received--; /* the peer's FIN */
	r.bytes_sent = acked;
	r.bytes_received = received;
	r.srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	r.retransmits = BPF_CORE_READ(tp, total_retrans);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

SEC("iter/udp")
int socklb_stats_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp_sk = ctx->udp_sk;
	struct sock *sk = (struct sock *)udp_sk;
	struct socklb_stat_rec r = {};

	if (!sk)
		return 0;
	/* An unconnected socket has no peer: counted_flow() skips it. */
	if (!counted_flow(&sk->__sk_common, sk, &r))
		return 0;
	r.proto = SOCKLB_IPPROTO_UDP;
	r.drops = read_drops(sk);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}
