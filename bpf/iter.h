/* What the libbpf iterator objects (flows.bpf.c, sock_destroy.bpf.c,
 * sock_stats.bpf.c) share. Include after vmlinux.h, bpf_helpers.h and
 * bpf_core_read.h. */
#ifndef SOCKLB_ITER_H
#define SOCKLB_ITER_H

/* vmlinux.h already defines the __u* types: take the layouts of socklb.h
 * without <linux/types.h>. */
#define SOCKLB_USERSPACE
#include "socklb.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define SOCKLB_IPPROTO_TCP 6
#define SOCKLB_IPPROTO_UDP 17
#define SOCKLB_TCP_LISTEN 10

/* The agent's flow records (socklb.h, "The flow record"): its socket
 * storage and its conn_flows slots; same keys and values as bpf/sock_lb.c.
 * The loader reuses the pinned maps (bpf_map__reuse_fd): they are never
 * created here. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct socklb_sk_flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SOCKLB_CONN_SLOTS);
	__type(key, __u32);
	__type(value, struct socklb_conn_slot);
} conn_flows SEC(".maps");

static __always_inline struct socklb_conn_slot *conn_slot_lookup(__u32 *idx)
{
	return bpf_map_lookup_elem(&conn_flows, idx);
}

#define SOCKLB_CONN_SLOT(idx) conn_slot_lookup(idx)
#include "conn_flows.h"

/* A copy of the socket's live flow record (frontend_id != 0): its
 * connect()'s slot, else its socket storage's. 1, or 0 when it has none. A
 * copy because the socket visited may be closing, and its slot taken by
 * another socket meanwhile. */
static __always_inline int flow_of(struct sock *sk, struct socklb_flow *f)
{
	struct socklb_sk_flow *sf;

	if (conn_flow_read(bpf_get_socket_cookie(sk), f))
		return 1;
	sf = bpf_sk_storage_get(&flows, sk, 0, 0);
	if (!sf || !sf->flow.frontend_id)
		return 0;
	__builtin_memcpy(f, &sf->flow, sizeof(*f));
	return 1;
}

/* The full TCP socket behind an iterator's sock_common, or NULL where no
 * flow can be: time-wait and request sockets have no storage, listeners no
 * flow. */
static __always_inline struct tcp_sock *flow_tcp_sock(struct sock_common *skc)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);

	if (!tp || BPF_CORE_READ(skc, skc_state) == SOCKLB_TCP_LISTEN)
		return NULL;
	return tp;
}

#endif /* SOCKLB_ITER_H */
