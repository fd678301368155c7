/* What the termination iterators (bpf/sock_destroy.bpf.c) and user space
 * (socklb/dataplane/sockdestroy.py) exchange: the maps' keys and values, the
 * records of the sockets they select (by flow target, or by cgroup and
 * cookie), their limits and enums.
 * socklb/dataplane/layout.py mirrors them and tests/unit/test_layout.py
 * compares the two field by field. */
#ifndef SOCKLB_SOCK_DESTROY_H
#define SOCKLB_SOCK_DESTROY_H

/* max_entries of the `targets` and `dsts` maps */
#define SOCKLB_TERM_TARGETS_MAX 16384
#define SOCKLB_TERM_DSTS_MAX 16384
/* max_entries of the `cgroups`, `judge_sets` and `cookies` maps (the socket programs) */
#define SOCKLB_TERM_CGROUPS_MAX 65536
#define SOCKLB_TERM_COOKIES_MAX 131072

/* term_cfg.mode */
enum socklb_term_mode {
	SOCKLB_TERM_DESTROY = 0, /* bpf_sock_destroy() each match, emit a record with the result */
	SOCKLB_TERM_DRY_RUN = 1, /* emit a record per match, destroy nothing */
	SOCKLB_TERM_STATS = 2,   /* only count matches in the target's value, emit nothing */
};

/* socklb_term_rec.target_kind: which key of `targets` matched */
enum socklb_term_kind {
	SOCKLB_TERM_KIND_EXACT = 1,    /* {F, B} */
	SOCKLB_TERM_KIND_BACKEND = 2,  /* {0, B} */
	SOCKLB_TERM_KIND_FRONTEND = 3, /* {F, 0} */
};

/* result of a record that was not destroyed here (dry run) */
#define SOCKLB_TERM_NOT_TRIED 1

/* term_cfg.flags */
#define SOCKLB_TERM_F_DSTS 1        /* flow programs: prefilter on the `dsts` map */
#define SOCKLB_TERM_F_ALL_CGROUPS 2 /* socket programs: sockets of every cgroup, not only `cgroups` */
#define SOCKLB_TERM_F_COOKIES 4     /* socket programs: the sockets in `cookies` (the only ones they destroy) */

/* Key of `targets`. */
struct socklb_term_key {
	__u32 frontend_id; /* 0: any frontend */
	__u32 backend_id;  /* 0: any backend of the frontend */
};

/* Value of `targets`: per-target counters of the current run; user space
 * zeroes them. */
struct socklb_term_val {
	__u64 matched;
	__u64 destroyed;
	__u64 failed;
};

/* The one value of `term_cfg`. */
struct socklb_term_cfg {
	__u32 mode;  /* enum socklb_term_mode */
	__u32 flags; /* SOCKLB_TERM_F_* */
};

/* Key of `dsts`: a backend a target points at (20 bytes). */
struct socklb_term_dst {
	__u32 addr[4]; /* network order, IPv4 v4-mapped */
	__u16 port;    /* network order */
	__u16 pad;     /* 0 */
};

/* One record per matched socket, written with bpf_seq_write (64 bytes). */
struct socklb_term_rec {
	__u64 cookie;    /* bpf_get_socket_cookie(), the socket diag cookie */
	__u32 src[4];    /* local address, network order, IPv4 v4-mapped */
	__u32 dst[4];    /* peer address, network order, IPv4 v4-mapped */
	__u16 sport;     /* network order */
	__u16 dport;     /* network order */
	__u16 family;    /* AF_INET / AF_INET6 */
	__u8 proto;      /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 state;      /* skc_state */
	__u32 frontend_id;
	__u32 backend_id;
	__s32 result;    /* bpf_sock_destroy(): 0 or -errno; SOCKLB_TERM_NOT_TRIED in a dry run */
	__u32 target_kind; /* enum socklb_term_kind */
};

/* One record per socket a socket program selects (88 bytes): who made it
 * (its cgroup), where it goes, and the flow it carries, if any. */
struct socklb_term_sock_rec {
	__u64 cookie;      /* bpf_get_socket_cookie(), the socket diag cookie */
	__u64 cgroup_id;   /* the socket's cgroup v2 (its creator's): the directory's inode */
	__u32 src[4];      /* local address, network order, IPv4 v4-mapped */
	__u32 dst[4];      /* peer address, network order, IPv4 v4-mapped */
	__u32 vip[4];      /* the flow's VIP as the application addressed it (frontend_id != 0) */
	__u16 sport;       /* network order */
	__u16 dport;       /* network order */
	__u16 vip_port;    /* network order (frontend_id != 0) */
	__u16 family;      /* AF_INET / AF_INET6 */
	__u8 proto;        /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 state;        /* skc_state */
	__u16 pad;
	__u32 frontend_id; /* of a live flow record connected to its backend, else 0 */
	__u32 backend_id;
	__s32 result;      /* bpf_sock_destroy(): 0 or -errno; SOCKLB_TERM_NOT_TRIED when not destroyed here */
};

/* The one value of `judge_stats` (the judge programs): what the current run
 * looked at; user space zeroes it before each run. */
struct socklb_judge_stats {
	__u64 judged; /* sockets of the cgroups of `judge_sets` judged */
	__u64 denied; /* of those, denied: each emitted a record */
};

_Static_assert(sizeof(struct socklb_judge_stats) == 16, "socklb_judge_stats is 16 bytes");
_Static_assert(sizeof(struct socklb_term_sock_rec) == 88, "socklb_term_sock_rec is 88 bytes");
_Static_assert(sizeof(struct socklb_term_rec) == 64, "socklb_term_rec is 64 bytes");
_Static_assert(sizeof(struct socklb_term_dst) == 20, "socklb_term_dst is 20 bytes");
_Static_assert(sizeof(struct socklb_term_val) == 24, "socklb_term_val is 24 bytes");

#endif /* SOCKLB_SOCK_DESTROY_H */
