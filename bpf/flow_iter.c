/* Dump every flow record of the flows socket storage: an iterator over a
 * bpf_sk_storage map, attached with the map's fd; user space reads the
 * records as a stream of struct socklb_flow. */
#include "socklb.h"

/* The iterator context is kernel-internal (net/core/bpf_sk_storage.c), so
 * it is declared here with the kernel's layout: 8-byte slots. */
struct bpf_iter_meta {
	void *seq;
	__u64 session_id;
	__u64 seq_num;
};

struct bpf_iter__bpf_sk_storage_map {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
	void *sk;
	void *value;
};

BPF_ITER(bpf_sk_storage_map)
{
	struct socklb_flow *f = ctx->value;
	struct socklb_flow copy = {};

	if (!f)
		return 0;
	__builtin_memcpy(&copy, f, sizeof(copy));
	/* Sockets that were re-connected away from a VIP keep a cleared record. */
	if (!copy.frontend_id)
		return 0;
	bpf_seq_write(ctx->meta->seq, &copy, sizeof(copy));
	return 0;
}
