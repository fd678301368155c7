/* Records of the flow reader (bpf/flows.bpf.c), read by
 * socklb/dataplane/flows.py; socklb/dataplane/layout.py mirrors them and
 * tests/unit/test_layout.py compares the two. */
#ifndef SOCKLB_FLOWS_H
#define SOCKLB_FLOWS_H

/* One live flow record (frontend_id != 0) and the socket that holds it. */
struct socklb_flow_rec {
	__u64 cookie;         /* bpf_get_socket_cookie(): dedups a socket shown twice */
	__u32 frontend_id;
	__u32 backend_id;
	__u32 vip[4];         /* as in struct socklb_flow: v4-mapped for IPv4 */
	__u32 backend_addr[4];
	__u16 vip_port;       /* network order */
	__u16 backend_port;   /* network order */
	__u8 proto;           /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 state;           /* skc_state of the socket (0: unknown, a slot read by map-iter) */
	__u16 family;         /* AF_INET / AF_INET6 of the socket (0: unknown, likewise) */
};

/* flow_counts (hash): open flows per (frontend, backend), counted in the
 * kernel by the counting iterators so that a statistics report costs one
 * walk and a map read, not a record per socket. */
struct socklb_flow_count_key {
	__u32 frontend_id;
	__u32 backend_addr[4];
	__u16 backend_port;   /* network order */
	__u16 pad;
};

#define SOCKLB_FLOW_COUNTS_MAX 65536

#endif /* SOCKLB_FLOWS_H */
