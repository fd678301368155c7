/* The policy decision, one body for the connect/sendmsg hooks (bcc,
 * bpf/sock_lb.c) and the termination iterators' judge (clang/libbpf,
 * bpf/sock_destroy.bpf.c), as Cilium builds per-family functions from one
 * body: only the map lookups differ, and each side defines them before
 * including this header:
 *
 *   SOCKLB_POLICY_FRONTEND(k)  lookup in policy_frontends, k a
 *                              struct socklb_policy_fe_key *
 *   SOCKLB_POLICY_PREFIX(k)    lookup in policy_prefixes (LPM), k a
 *                              struct socklb_policy_prefix_key *
 *
 * Both return the value pointer or NULL. Include after socklb.h and the
 * byte-order helpers (bpf_ntohs, bpf_htonl). socklb/lb/policy_eval.py is the
 * reference semantics; tests/kernel compare the two. */
#ifndef SOCKLB_POLICY_VERDICT_H
#define SOCKLB_POLICY_VERDICT_H

#if !defined(SOCKLB_POLICY_FRONTEND) || !defined(SOCKLB_POLICY_PREFIX)
#error "define SOCKLB_POLICY_FRONTEND(k) and SOCKLB_POLICY_PREFIX(k) before including policy_verdict.h"
#endif

/* The services master that policy judges a destination by: none for a
 * placeholder of a local redirect (an address that is no service VIP: the
 * prefixes judge it). */
static __always_inline const struct socklb_svc_val *policy_frontend_of(const struct socklb_svc_val *master)
{
	return master && !(master->flags & SOCKLB_SVC_F_NOT_SERVICE) ? master : 0;
}

/* A frontend is decided by the set's verdict for it; any other destination
 * by the rules of the set's longest prefix of its family holding it: a
 * matching DENY wins, else a matching ALLOW allows. No entry: denied. An
 * IPv4 destination (a v4 hook's, or a v4-mapped one of a v6 hook or of an
 * iterator) looks in the set's IPv4 space (SOCKLB_POL_SET_V4), so an IPv6
 * prefix such as ::/0 never decides it; in a v4 hook the test is a
 * constant. key: the destination as the application addressed it (16-byte
 * address, IPv4 v4-mapped; port in network order; proto); master: its
 * policy_frontend_of() master, NULL when it is no frontend. */
/* The rules of a prefix (or of an FQDN pattern) for a port and protocol:
 * 1 a matching rule allows and none denies, -1 a matching rule denies (deny
 * wins), 0 no rule matches. */
static __always_inline int policy_rules_decide(const struct socklb_policy_rules *r, __u16 port, __u8 proto)
{
	int allowed = 0, i;

	for (i = 0; i < SOCKLB_PORT_RULES_MAX; i++) {
		const struct socklb_port_rule *rule = &r->rules[i];

		if (i >= r->n)
			break;
		if (port < rule->port || port > rule->end_port || (rule->proto && rule->proto != proto))
			continue;
		if (rule->action == SOCKLB_POL_DENY)
			return -1;
		allowed = 1;
	}
	return allowed;
}

/* policy_allows() in three ways: 1 allowed, -1 denied by a verdict or a
 * rule (a frontend without an ALLOW verdict is denied), 0 a destination that
 * is no frontend and that no rule of the set decides (no prefix holds it, or
 * none of its rules matches): denied, unless an FQDN rule allows it (the
 * connect hook checks what the workload learned from DNS, fqdn_allows() in
 * bpf/sock_lb.c; the termination judge what it learned whether expired or
 * not, fqdn_keeps() in bpf/sock_destroy.bpf.c). */
static __always_inline int policy_decide(__u32 set, const struct socklb_svc_key *key,
					 const struct socklb_svc_val *master, const int v6)
{
	if (master) {
		struct socklb_policy_fe_key fk = { .set = set, .frontend_id = master->id };
		struct socklb_policy_verdict *v = SOCKLB_POLICY_FRONTEND(&fk);

		return v && v->action == SOCKLB_POL_ALLOW ? 1 : -1;
	}

	struct socklb_policy_prefix_key pk = { .prefixlen = 32 + 128, .set = set };
	struct socklb_policy_rules *r;

	if (!v6 || (key->addr[0] == 0 && key->addr[1] == 0 && key->addr[2] == bpf_htonl(0xffff)))
		pk.set |= SOCKLB_POL_SET_V4;
	__builtin_memcpy(pk.addr, key->addr, sizeof(pk.addr));
	r = SOCKLB_POLICY_PREFIX(&pk);
	return r ? policy_rules_decide(r, bpf_ntohs(key->port), key->proto) : 0;
}

#endif /* SOCKLB_POLICY_VERDICT_H */
