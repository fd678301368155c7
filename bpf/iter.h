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

/* The agent's socket storage; same key and value as bpf/sock_lb.c. The
 * loader reuses the pinned map (bpf_map__reuse_fd): it is never created here. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct socklb_flow);
} flows SEC(".maps");

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
