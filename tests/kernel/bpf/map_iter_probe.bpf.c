// SPDX-License-Identifier: GPL-2.0
/* A minimal map-element iterator over a socket storage map, loaded and
 * attached by bpftool (`bpftool iter pin ... map pinned ...`): a check of
 * the node's map_elem_iter probe that shares none of its code. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("iter/bpf_sk_storage_map")
int map_iter_probe(struct bpf_iter__bpf_sk_storage_map *ctx)
{
	__u64 one = 1;

	if (ctx->sk && ctx->value)
		bpf_seq_write(ctx->meta->seq, &one, sizeof(one));
	return 0;
}
