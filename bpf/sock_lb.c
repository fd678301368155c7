/* socklb socket load balancing: cgroup sock_addr hooks that translate a
 * service VIP to a backend once, at connect()/sendmsg(), and translate back
 * at recvmsg()/getpeername(). Compiled by bcc; the loader passes
 * -DSOCKLB_PIN_DIR="..." so every map is pinned (and adopted on restart).
 *
 * Each hook has one body shared by both families: the v6 flag is a
 * compile-time constant after inlining, so each program keeps only the
 * context accesses its attach type allows.
 */
#include <uapi/linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include "socklb.h"
#include "dns.h"

#define PIN(name) SOCKLB_PIN_DIR "/" name

BPF_TABLE_PINNED("hash", struct socklb_svc_key, struct socklb_svc_val, services,
		 SOCKLB_SERVICES_MAX, PIN("services"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", u32, struct socklb_backend, backends, SOCKLB_BACKENDS_MAX,
		 PIN("backends"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct socklb_affinity_key, struct socklb_affinity_val,
		 affinity, SOCKLB_AFFINITY_MAX, PIN("affinity"));
BPF_TABLE_PINNED("lru_hash", struct socklb_rnat_key, struct socklb_rnat_val, rev_nat,
		 SOCKLB_REV_NAT_MAX, PIN("rev_nat"));
BPF_TABLE_PINNED("percpu_array", u32, u64, counters, SOCKLB_CNT_MAX, PIN("counters"));
BPF_TABLE_PINNED("array", u32, u64, meta, SOCKLB_META_MAX, PIN("meta"));
BPF_TABLE_PINNED("hash", u64, struct socklb_workload, workloads, SOCKLB_WORKLOAD_CGROUPS_MAX,
		 PIN("workloads"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct socklb_policy_fe_key, struct socklb_policy_verdict, policy_frontends,
		 SOCKLB_POLICY_FRONTENDS_MAX, PIN("policy_frontends"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct socklb_policy_prefix_key, struct socklb_policy_rules, policy_prefixes,
		 SOCKLB_POLICY_PREFIXES_MAX, PIN("policy_prefixes"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("percpu_array", u32, u64, workload_denies, SOCKLB_WORKLOAD_IDS_MAX, PIN("workload_denies"));
BPF_TABLE_PINNED("array", u32, struct socklb_policy_cfg, policy_cfg, 1, PIN("policy_cfg"));
BPF_TABLE_PINNED("hash", struct socklb_exempt_key, u32, redirect_exempt, SOCKLB_REDIRECT_EXEMPT_MAX,
		 PIN("redirect_exempt"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct socklb_policy_fqdn_key, struct socklb_policy_rules, policy_fqdns,
		 SOCKLB_POLICY_FQDNS_MAX, PIN("policy_fqdns"), BPF_F_NO_PREALLOC);
/* The DNS learner's (bpf/dns.bpf.c, loaded first: this reuses its pin; a
 * datapath without the learner gets an empty one, and FQDN rules allow
 * nothing). */
BPF_TABLE_PINNED("lru_hash", struct socklb_dns_learned_key, struct socklb_dns_learned_val, dns_learned,
		 SOCKLB_DNS_LEARNED_MAX, PIN("dns_learned"));

/* The flow records (socklb.h, "The flow record"): connect()'s in the
 * conn_flows slots, sendmsg()'s (and connect()'s when its slots are taken)
 * in socket storage. Both pinned like the rest so that flows of sockets
 * opened before an agent restart keep their reverse translation (bcc's
 * BPF_SK_STORAGE cannot be pinned, hence the spelled-out declaration). */
BPF_TABLE_PINNED("array", u32, struct socklb_conn_slot, conn_flows, SOCKLB_CONN_SLOTS, PIN("conn_flows"));
struct flows_table_t {
	int key;
	struct socklb_sk_flow leaf;
	void *(*sk_storage_get)(void *, void *, int);
	int (*sk_storage_delete)(void *);
	u32 flags;
};
__attribute__((section("maps/sk_storage:" PIN("flows"))))
struct flows_table_t flows = { .flags = BPF_F_NO_PREALLOC };
BPF_ANNOTATE_KV_PAIR(flows, int, struct socklb_sk_flow);

static __always_inline struct socklb_conn_slot *conn_slot_lookup(__u32 *idx)
{
	return conn_flows.lookup(idx);
}

#define SOCKLB_CONN_SLOT(idx) conn_slot_lookup(idx)
#include "conn_flows.h"

static __always_inline void count(u32 idx)
{
	u64 *v = counters.lookup(&idx);
	if (v)
		*v += 1;
}

static __always_inline void ctx_load_addr(struct bpf_sock_addr *ctx, __u32 addr[4], const int v6)
{
	if (v6) {
		addr[0] = ctx->user_ip6[0];
		addr[1] = ctx->user_ip6[1];
		addr[2] = ctx->user_ip6[2];
		addr[3] = ctx->user_ip6[3];
	} else {
		addr[0] = 0;
		addr[1] = 0;
		addr[2] = bpf_htonl(0xffff);
		addr[3] = ctx->user_ip4;
	}
}

static __always_inline int addr_is_v4mapped(const __u32 addr[4])
{
	return addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff);
}

/* A v4 hook can only be given a v4 address; a v6 hook takes either (v4 as mapped). */
static __always_inline int ctx_store_addr(struct bpf_sock_addr *ctx, const __u32 addr[4],
					  __u16 port, const int v6)
{
	if (v6) {
		ctx->user_ip6[0] = addr[0];
		ctx->user_ip6[1] = addr[1];
		ctx->user_ip6[2] = addr[2];
		ctx->user_ip6[3] = addr[3];
	} else {
		if (!addr_is_v4mapped(addr))
			return -1;
		ctx->user_ip4 = addr[3];
	}
	ctx->user_port = port;
	return 0;
}

static __always_inline int addr_eq(const __u32 a[4], const __u32 b[4])
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void addr_copy(__u32 dst[4], const __u32 src[4])
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

/* Maglev's key: the client netns, so one client sees one backend per
 * frontend on every node. A 64-bit finaliser (splitmix64) spreads cookies,
 * which are small sequential numbers. */
static __always_inline __u32 maglev_hash(__u64 netns, __u32 frontend_id)
{
	__u64 x = netns ^ ((__u64)frontend_id << 32) ^ 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return (__u32)x ^ (__u32)(x >> 32);
}

static __always_inline struct socklb_backend *
affinity_backend(const struct socklb_svc_val *master, __u64 netns, __u64 now, __u32 *backend_id)
{
	struct socklb_affinity_key ak = { .netns_cookie = netns, .frontend_id = master->id };
	struct socklb_affinity_val *av = affinity.lookup(&ak);
	struct socklb_backend *be;

	if (!av || now - av->last_used_ns > (__u64)master->affinity_timeout * 1000000000ULL)
		return NULL;
	*backend_id = av->backend_id;
	be = backends.lookup(backend_id);
	/* A backend that left the frontend, or drains, takes no new flows. */
	if (!be || be->frontend_id != master->id || be->state != SOCKLB_BE_ACTIVE)
		return NULL;
	av->last_used_ns = now;
	return be;
}

static __always_inline struct socklb_backend *
select_backend(struct bpf_sock_addr *ctx, struct socklb_svc_key *key, const struct socklb_svc_val *master,
	       __u32 *backend_id)
{
	struct socklb_backend *be;
	struct socklb_svc_val *slot;
	__u64 now = 0, netns = 0;
	__u32 idx;

	/* Only affinity and Maglev key on the client's netns: random selection,
	 * the common case, skips the helper call. */
	if (master->affinity_timeout || master->selection == SOCKLB_SEL_MAGLEV)
		netns = bpf_get_netns_cookie(ctx);
	if (master->affinity_timeout) {
		now = bpf_ktime_get_ns();
		be = affinity_backend(master, netns, now, backend_id);
		if (be) {
			count(SOCKLB_CNT_AFFINITY_HIT);
			return be;
		}
		count(SOCKLB_CNT_AFFINITY_MISS);
	}
	if (master->count == 0)
		return NULL;
	if (master->selection == SOCKLB_SEL_MAGLEV)
		idx = maglev_hash(netns, master->id) % master->count;
	else
		idx = bpf_get_prandom_u32() % master->count;
	key->slot = idx + 1;
	slot = services.lookup(key);
	key->slot = 0;
	if (!slot)
		return NULL;
	*backend_id = slot->id;
	be = backends.lookup(backend_id);
	if (!be)
		return NULL;
	if (master->affinity_timeout) {
		struct socklb_affinity_key ak = { .netns_cookie = netns, .frontend_id = master->id };
		struct socklb_affinity_val av = { .last_used_ns = now, .backend_id = *backend_id };
		affinity.update(&ak, &av);
	}
	return be;
}

/* 1 when the flow already records this frontend and backend: an unconnected
 * socket sending to the same backend again (and a re-connect to the same). */
static __always_inline int flow_records(const struct socklb_flow *f, const struct socklb_svc_key *key,
					const struct socklb_svc_val *master, __u32 backend_id,
					const struct socklb_backend *be)
{
	return f->frontend_id == master->id && f->backend_id == backend_id &&
	       f->backend_port == be->port && addr_eq(f->backend_addr, be->addr) &&
	       f->vip_port == key->port && addr_eq(f->vip, key->addr) && f->proto == key->proto;
}

static __always_inline void flow_record(struct socklb_flow *f, const struct socklb_svc_key *key,
					const struct socklb_svc_val *master, __u32 backend_id,
					const struct socklb_backend *be)
{
	f->backend_id = backend_id;
	addr_copy(f->vip, key->addr);
	f->vip_port = key->port;
	addr_copy(f->backend_addr, be->addr);
	f->backend_port = be->port;
	f->proto = key->proto;
	/* Last: a record is live once its frontend is set (conn_flows.h). */
	socklb_barrier();
	f->frontend_id = master->id;
}

/* connect() to a VIP: the record in the socket's slot, or in its socket
 * storage when the slots it may take are all in use. The other place's
 * record, if any (an earlier sendmsg or overflow), is cleared. */
static __always_inline void flow_connect(struct bpf_sock_addr *ctx, const struct socklb_svc_key *key,
					 const struct socklb_svc_val *master, __u32 backend_id,
					 const struct socklb_backend *be)
{
	struct socklb_conn_slot *s = conn_slot_claim(bpf_get_socket_cookie(ctx));
	struct socklb_sk_flow *sf = flows.sk_storage_get(ctx->sk, 0, s ? 0 : BPF_SK_STORAGE_GET_F_CREATE);

	if (s) {
		if (!flow_records(&s->flow, key, master, backend_id, be))
			flow_record(&s->flow, key, master, backend_id, be);
		if (sf)
			sf->flow.frontend_id = 0;
	} else if (sf && !flow_records(&sf->flow, key, master, backend_id, be)) {
		flow_record(&sf->flow, key, master, backend_id, be);
	}
}

/* connect() elsewhere: a socket re-connected away from a VIP must not keep
 * reporting the old one. */
static __always_inline void flow_disconnect(struct bpf_sock_addr *ctx)
{
	struct socklb_conn_slot *s = conn_slot_find(bpf_get_socket_cookie(ctx));
	struct socklb_sk_flow *sf = flows.sk_storage_get(ctx->sk, 0, 0);

	if (s)
		conn_slot_free(s);
	if (sf)
		sf->flow.frontend_id = 0;
}

/* The socket's cookie, the reverse-NAT keys' first half: the flow's ring
 * holds it once the socket has sent a datagram through a VIP, which saves
 * the helper call on every later one. */
static __always_inline __u64 flow_cookie(struct bpf_sock_addr *ctx, const struct socklb_sk_flow *f)
{
	if (f && f->rnat_used)
		return f->rnat[0].cookie;
	return bpf_get_socket_cookie(ctx);
}

/* Remember the reverse-NAT key on the socket so sock_release can delete it. */
static __always_inline void flow_remember_rnat(struct socklb_sk_flow *f, const struct socklb_rnat_key *rk)
{
	__u8 i;

#pragma unroll
	for (i = 0; i < SOCKLB_FLOW_RNAT_RING; i++) {
		if (i < f->rnat_used && addr_eq(f->rnat[i].addr, rk->addr) && f->rnat[i].port == rk->port)
			return;
	}
	i = f->rnat_next & (SOCKLB_FLOW_RNAT_RING - 1);
	f->rnat[i] = *rk;
	f->rnat_next = (i + 1) & (SOCKLB_FLOW_RNAT_RING - 1);
	if (f->rnat_used < SOCKLB_FLOW_RNAT_RING)
		f->rnat_used++;
}

/* The workload of the current process: that of its cgroup or of its
 * deepest ancestor that is one. The walk covers only the levels workloads
 * are at, deepest first; the process's own cgroup is its ancestor at its
 * own level. With SOCKLB_WORKLOAD_EXACT (kernels that refuse the ancestor
 * helper here, or forced) the agent writes every cgroup below a workload,
 * and the own cgroup is all there is to look up. */
static __always_inline struct socklb_workload *find_workload(const struct socklb_policy_cfg *cfg)
{
	struct socklb_workload *wl = NULL;
	__u64 id;

#ifdef SOCKLB_WORKLOAD_EXACT
	id = bpf_get_current_cgroup_id();
	wl = workloads.lookup(&id);
#else
	int i;
	for (i = 0; i < SOCKLB_CGROUP_DEPTH_MAX && !wl; i++) {
		int level = (int)cfg->max_level - i;

		if (level < (int)cfg->min_level)
			break;
		id = bpf_get_current_ancestor_cgroup_id(level);
		if (id) /* 0: the process's cgroup is above this level */
			wl = workloads.lookup(&id);
	}
#endif
	return wl;
}

/* The workload of the current process, for policy and bypass: NULL when no
 * workload is restricted or bypassed (one array read: the cost of a node
 * without policy; with redirect exemptions alone, *exempt_cfg is set and
 * the workload is looked up for a redirected frontend only). */
static __always_inline struct socklb_workload *current_workload(struct socklb_policy_cfg **exempt_cfg)
{
	struct socklb_policy_cfg *cfg;
	u32 zero = 0;

	*exempt_cfg = NULL;
	cfg = policy_cfg.lookup(&zero);
	if (!cfg || !cfg->cgroups)
		return NULL;
	if (cfg->flags & SOCKLB_CFG_F_EXEMPT_ONLY) {
		*exempt_cfg = cfg;
		return NULL;
	}
	return find_workload(cfg);
}

/* The policy decision (policy_decide, policy_frontend_of): one body with the
 * termination iterators' judge (bpf/sock_destroy.bpf.c), the lookups ours
 * (bcc refuses a map call written in a macro: the macros call functions). */
static __always_inline struct socklb_policy_verdict *policy_frontend_lookup(struct socklb_policy_fe_key *k)
{
	return policy_frontends.lookup(k);
}

static __always_inline struct socklb_policy_rules *policy_prefix_lookup(struct socklb_policy_prefix_key *k)
{
	return policy_prefixes.lookup(k);
}

#define SOCKLB_POLICY_FRONTEND(k) policy_frontend_lookup(k)
#define SOCKLB_POLICY_PREFIX(k) policy_prefix_lookup(k)
#include "policy_verdict.h"

/* FQDN rules (docs/fqdn.md): the address was learned for this workload from a
 * DNS answer (dns_learned), and over its unexpired slots (one per name
 * pattern that taught it) the rules of the patterns, in this set, allow the
 * port: one allows and none denies (deny wins, as within one rule set). One
 * lookup when nothing was learned. Only for a destination policy_decide()
 * leaves undecided. */
static __always_inline int fqdn_allows(__u32 set, __u32 wid, const struct socklb_svc_key *key)
{
	struct socklb_dns_learned_key lk = { .workload = wid };
	struct socklb_dns_learned_val *lv;
	struct socklb_policy_fqdn_key fk = { .set = set };
	struct socklb_policy_rules *r;
	int allowed = 0, i;
	__u64 now;

	__builtin_memcpy(lk.addr, key->addr, sizeof(lk.addr));
	lv = dns_learned.lookup(&lk);
	if (!lv)
		return 0;
	now = bpf_ktime_get_boot_ns();
#pragma unroll
	for (i = 0; i < SOCKLB_DNS_LEARNED_SLOTS; i++) {
		if (lv->slots[i].expiry_ns <= now)
			continue;
		fk.pattern = lv->slots[i].pattern;
		r = policy_fqdns.lookup(&fk);
		if (!r)
			continue;
		int d = policy_rules_decide(r, bpf_ntohs(key->port), key->proto);

		if (d < 0)
			return 0;
		allowed |= d;
	}
	return allowed;
}

/* A destination only FQDN rules could allow that they do not: counted as
 * such, and apart when the workload had learned the address but every slot
 * of it has expired (docs/fqdn.md, "Counters"). Off the allowed path. */
static __always_inline void fqdn_count_deny(__u32 wid, const struct socklb_svc_key *key)
{
	struct socklb_dns_learned_key lk = { .workload = wid };
	struct socklb_dns_learned_val *lv;
	__u64 now = bpf_ktime_get_boot_ns();
	int i;

	count(SOCKLB_CNT_FQDN_DENY);
	__builtin_memcpy(lk.addr, key->addr, sizeof(lk.addr));
	lv = dns_learned.lookup(&lk);
	if (!lv)
		return;
#pragma unroll
	for (i = 0; i < SOCKLB_DNS_LEARNED_SLOTS; i++)
		if (lv->slots[i].expiry_ns > now)
			return;
	count(SOCKLB_CNT_FQDN_EXPIRED);
}

static __always_inline int policy_deny(const struct socklb_workload *wl)
{
	u32 idx = wl->id;
	u64 *v = workload_denies.lookup(&idx);

	if (v)
		*v += 1;
	count(SOCKLB_CNT_POLICY_DENY);
	bpf_set_retval(-EPERM);
	return 0;
}

static __always_inline int redirect_exempt_of(const struct socklb_workload *wl, __u32 frontend_id)
{
	struct socklb_exempt_key ek;

	if (!wl)
		return 0;
	ek.workload_id = wl->id;
	ek.frontend_id = frontend_id;
	return redirect_exempt.lookup(&ek) != NULL;
}

/* Common part of connect and sendmsg: 1 = let the syscall go on (translated
 * or not a VIP), 0 = fail it (ECONNREFUSED: no backend; EPERM: policy). */
static __always_inline int translate(struct bpf_sock_addr *ctx, const int v6, const int sendmsg)
{
	struct socklb_svc_key key = {};
	struct socklb_svc_val *master;
	struct socklb_policy_cfg *exempt_cfg;
	struct socklb_workload *wl;
	struct socklb_backend *be;
	struct socklb_sk_flow *f;
	__u32 backend_id = 0;

	ctx_load_addr(ctx, key.addr, v6);
	key.port = (__u16)ctx->user_port;
	key.proto = (__u8)ctx->protocol;
	master = services.lookup(&key);
	wl = current_workload(&exempt_cfg);
	if (wl) {
		/* As the application addressed it: a redirected frontend by its
		 * service's verdict, a placeholder's address by the prefixes. */
		if (wl->policy_set) {
			int verdict = policy_decide(wl->policy_set, &key, policy_frontend_of(master), v6);

			/* Nothing decides a destination that is no frontend: what
			 * the workload learned from DNS (FQDN rules). */
			if (verdict == 0 && !fqdn_allows(wl->policy_set, wl->id, &key)) {
				fqdn_count_deny(wl->id, &key);
				return policy_deny(wl);
			}
			if (verdict < 0)
				return policy_deny(wl);
		}
		if (wl->flags & SOCKLB_WL_BYPASS)
			master = NULL; /* its own balancer handles VIPs: leave the address alone */
	}
	/* Only a redirected frontend pays the second lookup. No redirect entry
	 * (yet, or any more), or an exempt workload: the service as it is. */
	if (master && (master->flags & SOCKLB_SVC_F_REDIRECTED)) {
		struct socklb_svc_val *local;

		key.table = SOCKLB_TABLE_REDIRECT;
		local = services.lookup(&key);
		if (local && !wl && exempt_cfg)
			wl = find_workload(exempt_cfg); /* exemptions alone: looked up here only */
		if (local && !redirect_exempt_of(wl, local->id))
			master = local;
		else
			key.table = SOCKLB_TABLE_SERVICE;
	}
	if (master && (master->flags & SOCKLB_SVC_F_NOT_SERVICE))
		master = NULL;
	if (!master) {
		if (!sendmsg)
			flow_disconnect(ctx);
		return 1;
	}
	be = select_backend(ctx, &key, master, &backend_id);
	if (!be || ctx_store_addr(ctx, be->addr, be->port, v6) < 0) {
		count(SOCKLB_CNT_NO_BACKEND);
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	}
	count(SOCKLB_CNT_TRANSLATED);

	if (!sendmsg) {
		flow_connect(ctx, &key, master, backend_id, be);
		return 1;
	}
	f = flows.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (f && !flow_records(&f->flow, &key, master, backend_id, be))
		flow_record(&f->flow, &key, master, backend_id, be);

	struct socklb_rnat_key rk = { .cookie = flow_cookie(ctx, f) };
	struct socklb_rnat_val rv = { .frontend_id = master->id };
	struct socklb_rnat_val *old;

	addr_copy(rk.addr, be->addr);
	rk.port = be->port;
	addr_copy(rv.addr, key.addr);
	rv.port = key.port;
	/* Look before writing: an unconnected socket sends to the same backend
	 * again and again, and an LRU update takes a lock (and may evict) while
	 * a lookup only marks the entry used. */
	old = rev_nat.lookup(&rk);
	if (!old || old->frontend_id != rv.frontend_id || old->port != rv.port || !addr_eq(old->addr, rv.addr))
		rev_nat.update(&rk, &rv);
	if (f)
		flow_remember_rnat(f, &rk);
	return 1;
}

/* 1 when f is live and its backend is this peer: report its VIP. */
static __always_inline int flow_reverse(struct bpf_sock_addr *ctx, const struct socklb_flow *f,
					const __u32 addr[4], __u16 port, const int v6, const int recvmsg)
{
	if (!f->frontend_id || f->backend_port != port || !addr_eq(f->backend_addr, addr))
		return 0;
	ctx_store_addr(ctx, f->vip, f->vip_port, v6);
	if (recvmsg)
		count(SOCKLB_CNT_RNAT_HIT);
	return 1;
}

/* recvmsg and getpeername: report the VIP, not the backend. */
static __always_inline int reverse(struct bpf_sock_addr *ctx, const int v6, const int recvmsg)
{
	struct socklb_sk_flow *f;
	struct socklb_conn_slot *s;
	__u32 addr[4];
	__u16 port = (__u16)ctx->user_port;

	ctx_load_addr(ctx, addr, v6);
	f = flows.sk_storage_get(ctx->sk, 0, 0);
	if (f && flow_reverse(ctx, &f->flow, addr, port, v6, recvmsg))
		return 1;
	/* Only a connected socket has a slot: an unconnected UDP socket's
	 * datagrams skip the cookie and the probe. */
	if (ctx->sk->state != BPF_TCP_CLOSE) {
		s = conn_slot_find(bpf_get_socket_cookie(ctx));
		if (s && flow_reverse(ctx, &s->flow, addr, port, v6, recvmsg))
			return 1;
	}
	if (!recvmsg || !f)
		return 1;

	struct socklb_rnat_key rk = { .cookie = flow_cookie(ctx, f) };
	struct socklb_rnat_val *rv;

	addr_copy(rk.addr, addr);
	rk.port = port;
	rv = rev_nat.lookup(&rk);
	if (!rv) {
		count(SOCKLB_CNT_RNAT_MISS);
		return 1;
	}
	ctx_store_addr(ctx, rv->addr, rv->port, v6);
	count(SOCKLB_CNT_RNAT_HIT);
	return 1;
}

int socklb_connect4(struct bpf_sock_addr *ctx) { return translate(ctx, 0, 0); }
int socklb_connect6(struct bpf_sock_addr *ctx) { return translate(ctx, 1, 0); }
int socklb_sendmsg4(struct bpf_sock_addr *ctx) { return translate(ctx, 0, 1); }
int socklb_sendmsg6(struct bpf_sock_addr *ctx) { return translate(ctx, 1, 1); }
int socklb_recvmsg4(struct bpf_sock_addr *ctx) { return reverse(ctx, 0, 1); }
int socklb_recvmsg6(struct bpf_sock_addr *ctx) { return reverse(ctx, 1, 1); }
int socklb_getpeername4(struct bpf_sock_addr *ctx) { return reverse(ctx, 0, 0); }
int socklb_getpeername6(struct bpf_sock_addr *ctx) { return reverse(ctx, 1, 0); }

/* The socket's slot is freed here; the kernel frees its socket storage with
 * the socket, but the reverse-NAT entries that records made live in a map
 * and are deleted here rather than left to the LRU. */
int socklb_sock_release(struct bpf_sock *sk)
{
	struct socklb_conn_slot *s = conn_slot_find(bpf_get_socket_cookie(sk));
	struct socklb_sk_flow *f = flows.sk_storage_get(sk, 0, 0);
	__u8 i;

	if (s)
		conn_slot_free(s);
	if (!f)
		return 1;
#pragma unroll
	for (i = 0; i < SOCKLB_FLOW_RNAT_RING; i++) {
		if (i < f->rnat_used) {
			struct socklb_rnat_key rk = f->rnat[i];
			if (rev_nat.delete(&rk) == 0)
				count(SOCKLB_CNT_RNAT_CLEANED);
		}
	}
	return 1;
}
