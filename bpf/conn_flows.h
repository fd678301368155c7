/* The conn_flows slots (struct socklb_conn_slot in socklb.h): one body for
 * the hooks (bpf/sock_lb.c, bcc) and the iterators (bpf/iter.h, libbpf).
 * The includer defines SOCKLB_CONN_SLOT(idx): a function that looks up the
 * slot at *idx in its conn_flows map (bcc refuses a map call written in a
 * macro: the macro calls a function).
 *
 * No lock: a slot is claimed by a compare-and-swap of its cookie from 0, and
 * only its owner writes it; sock_release clears frontend_id, then the cookie.
 * A claimed slot's frontend_id is written last, so a reader that sees the
 * owner's cookie and a frontend id sees a whole record (x86 and the BPF
 * memory model keep stores in order; the barriers keep the compiler from
 * reordering them). Readers that race a close (iterators: the socket they
 * visit may be closing) copy the record and check the cookie again. */
#ifndef SOCKLB_CONN_FLOWS_H
#define SOCKLB_CONN_FLOWS_H

#define socklb_barrier() asm volatile("" ::: "memory")

static __always_inline __u32 conn_slot_index(__u64 cookie, __u32 i)
{
	return ((__u32)cookie + i) & (SOCKLB_CONN_SLOTS - 1);
}

/* The slot of the socket with this cookie, or NULL. */
static __always_inline struct socklb_conn_slot *conn_slot_find(__u64 cookie)
{
	struct socklb_conn_slot *s;
	__u32 i, idx;

#pragma unroll
	for (i = 0; i < SOCKLB_CONN_PROBE; i++) {
		idx = conn_slot_index(cookie, i);
		s = SOCKLB_CONN_SLOT(&idx);
		if (s && s->cookie == cookie)
			return s;
	}
	return NULL;
}

/* The socket's slot: the one it has, else a free one claimed; NULL when the
 * probe window is full (the caller falls back to socket storage). */
static __always_inline struct socklb_conn_slot *conn_slot_claim(__u64 cookie)
{
	struct socklb_conn_slot *s = conn_slot_find(cookie);
	__u32 i, idx;

	if (s)
		return s;
#pragma unroll
	for (i = 0; i < SOCKLB_CONN_PROBE; i++) {
		idx = conn_slot_index(cookie, i);
		s = SOCKLB_CONN_SLOT(&idx);
		if (s && s->cookie == 0 && __sync_val_compare_and_swap(&s->cookie, 0, cookie) == 0)
			return s;
	}
	return NULL;
}

static __always_inline void conn_slot_free(struct socklb_conn_slot *s)
{
	s->flow.frontend_id = 0;
	socklb_barrier();
	s->cookie = 0;
}

/* A copy of the live record of the socket with this cookie: 1, or 0 when
 * it has none (or its slot was freed while being read). */
static __always_inline int conn_flow_read(__u64 cookie, struct socklb_flow *out)
{
	struct socklb_conn_slot *s = conn_slot_find(cookie);

	if (!s)
		return 0;
	__builtin_memcpy(out, &s->flow, sizeof(*out));
	socklb_barrier();
	return s->cookie == cookie && out->frontend_id != 0;
}

#endif /* SOCKLB_CONN_FLOWS_H */
