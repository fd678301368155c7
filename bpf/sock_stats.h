/* What the socket-statistics iterators (bpf/sock_stats.bpf.c) emit to user
 * space (socklb/dataplane/sockstats.py). socklb/dataplane/layout.py mirrors
 * it and tests/unit/test_layout.py compares the two field by field. */
#ifndef SOCKLB_SOCK_STATS_H
#define SOCKLB_SOCK_STATS_H

/* One record per counted socket, written with bpf_seq_write (48 bytes). */
struct socklb_stat_rec {
	__u64 cookie;         /* bpf_get_socket_cookie() */
	__u64 bytes_sent;     /* TCP: payload acked (bytes_acked without SYN, FIN) */
	__u64 bytes_received; /* TCP: payload received (bytes_received without FIN) */
	__u32 frontend_id;
	__u32 backend_id;
	__u32 srtt_us;        /* TCP: tcp_sock.srtt_us >> 3; 0 = no sample yet */
	__u32 retransmits;    /* TCP: tcp_sock.total_retrans */
	__u32 drops;          /* UDP: receive drops */
	__u16 family;         /* AF_INET / AF_INET6 */
	__u8 proto;           /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 state;           /* skc_state (1 = established / connected) */
};

_Static_assert(sizeof(struct socklb_stat_rec) == 48, "socklb_stat_rec is 48 bytes");

#endif /* SOCKLB_SOCK_STATS_H */
