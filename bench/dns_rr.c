/*
 * dns_rr: DNS queries one at a time, timed, the way a stub resolver asks.
 *
 *   dns_rr udp SERVER NAME COUNT TIMEOUT_MS   COUNT A queries over UDP
 *   dns_rr tcp SERVER NAME COUNT TIMEOUT_MS   COUNT A queries, each on a TCP
 *       connection of its own (connect, 2-byte length + query, answer, close),
 *       what a stub does after a truncated answer
 *
 * SERVER is an IPv4 address (port 53). NAME may hold one %d: query i gets
 * NAME with i in it (0 .. COUNT-1), so one run can resolve COUNT distinct
 * names; without %d every query asks the same name. The UDP socket is
 * unconnected (sendto/recvfrom, as glibc's stub) and its transaction ids
 * count up, so every query is a new outstanding query for a DNS learner.
 *
 * One line out, latencies in microseconds:
 *   ops=N ok=K bad=B timeouts=T p50_us=.. p99_us=.. wall_ns=W ns_per_op=..
 * ok: answers with our id, RCODE 0 and at least one answer record.
 *
 *   dns_rr cycle udp|tcp NAME BLOCK ROUNDS TIMEOUT_MS CGROUP,SERVER ...
 *       paired: every variant in turn (order rotated each round), BLOCK
 *       queries each; before each block the process moves itself into the
 *       variant's cgroup (CGROUP/cgroup.procs) and makes its socket there;
 *       one line per block: round=R variant=I ok=.. bad=.. timeouts=..
 *       p50_us=.. p99_us=.. wall_ns=.. cpu_ns=.. (cpu_ns: this process's
 *       CPU clock over the block, its packets' softirq work on loopback
 *       included)
 * Built by bench/fqdn_dns.py with gcc at run time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* The query for `name` (A, IN, RD) at q; its length, or -1. */
static int build(unsigned char *q, uint16_t id, const char *name)
{
	int n = 12, len;
	const char *p = name, *dot;

	memset(q, 0, 12);
	q[0] = id >> 8; q[1] = id & 255;
	q[2] = 0x01;            /* RD */
	q[5] = 1;               /* QDCOUNT */
	while (*p) {
		dot = strchr(p, '.');
		len = dot ? (int)(dot - p) : (int)strlen(p);
		if (len < 1 || len > 63 || n + len + 6 > 300)
			return -1;
		q[n++] = (unsigned char)len;
		memcpy(q + n, p, (size_t)len);
		n += len;
		p += len + (dot ? 1 : 0);
	}
	q[n++] = 0;
	q[n++] = 0; q[n++] = 1;  /* A */
	q[n++] = 0; q[n++] = 1;  /* IN */
	return n;
}

/* 1: a good answer to id; 0: an answer, not good; -1: not ours. */
static int judge(const unsigned char *r, int n, uint16_t id)
{
	if (n < 12 || ((r[0] << 8) | r[1]) != id || !(r[2] & 0x80))
		return -1;
	return (r[3] & 0x0f) == 0 && ((r[6] << 8) | r[7]) > 0;
}

static int wait_in(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, timeout_ms) == 1;
}

/* One query over UDP: 1 good, 0 bad, -2 timeout. */
static int udp_one(int fd, const struct sockaddr_in *sa, const unsigned char *q, int qn, uint16_t id,
		   int timeout_ms)
{
	unsigned char r[4096];
	double deadline = now_ns() + timeout_ms * 1e6;

	if (sendto(fd, q, (size_t)qn, 0, (const struct sockaddr *)sa, sizeof(*sa)) != qn)
		return 0;
	for (;;) {
		int left = (int)((deadline - now_ns()) / 1e6), n, v;

		if (left < 0 || !wait_in(fd, left))
			return -2;
		n = (int)recvfrom(fd, r, sizeof(r), 0, NULL, NULL);
		v = judge(r, n, id);
		if (v >= 0)
			return v;   /* a late answer to an earlier query: keep waiting */
	}
}

static int read_full(int fd, unsigned char *b, int n, int timeout_ms)
{
	int got = 0;

	while (got < n) {
		ssize_t k;

		if (!wait_in(fd, timeout_ms))
			return -1;
		k = read(fd, b + got, (size_t)(n - got));
		if (k <= 0)
			return -1;
		got += (int)k;
	}
	return 0;
}

/* One query on a TCP connection of its own: 1 good, 0 bad, -2 timeout. */
static int tcp_one(const struct sockaddr_in *sa, const unsigned char *q, int qn, uint16_t id, int timeout_ms)
{
	unsigned char buf[2 + 512], r[65536];
	int fd = socket(AF_INET, SOCK_STREAM, 0), v = 0, n;

	if (fd < 0)
		return 0;
	buf[0] = (unsigned char)(qn >> 8); buf[1] = (unsigned char)qn;
	memcpy(buf + 2, q, (size_t)qn);
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0 || write(fd, buf, (size_t)qn + 2) != qn + 2)
		goto out;
	if (read_full(fd, buf, 2, timeout_ms) != 0) {
		v = -2;
		goto out;
	}
	n = (buf[0] << 8) | buf[1];
	if (read_full(fd, r, n, timeout_ms) != 0) {
		v = -2;
		goto out;
	}
	v = judge(r, n, id) == 1;
out:
	close(fd);
	return v;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

struct result {
	long ok, bad, timeouts;
	double p50, p99, wall_ns, cpu_ns;
};

static double cpu_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* COUNT queries to sa, one at a time; lat: room for COUNT. A UDP socket of
 * its own, made here: a socket belongs to the cgroup its maker was in. */
static int run(int tcp, const struct sockaddr_in *sa, const char *fmt, long count, int timeout_ms,
	       double *lat, struct result *res)
{
	unsigned char q[512];
	char name[300];
	int fd = -1;
	long i;
	double start = now_ns(), cpu0 = cpu_ns(), t0;
	static uint16_t id;

	memset(res, 0, sizeof(*res));
	if (!id)
		id = (uint16_t)(getpid() * 2654435761u);
	if (!tcp && (fd = socket(AF_INET, SOCK_DGRAM, 0)) < 0) {
		perror("socket");
		return -1;
	}
	for (i = 0; i < count; i++) {
		int qn, v;

		snprintf(name, sizeof(name), fmt, (int)i);
		id++;
		qn = build(q, id, name);
		if (qn < 0) {
			fprintf(stderr, "bad name %s\n", name);
			return -1;
		}
		t0 = now_ns();
		v = tcp ? tcp_one(sa, q, qn, id, timeout_ms) : udp_one(fd, sa, q, qn, id, timeout_ms);
		lat[i] = (now_ns() - t0) / 1e3;
		res->ok += v == 1;
		res->bad += v == 0;
		res->timeouts += v == -2;
	}
	res->wall_ns = now_ns() - start;
	res->cpu_ns = cpu_ns() - cpu0;
	if (fd >= 0)
		close(fd);
	qsort(lat, (size_t)count, sizeof(*lat), cmp);
	res->p50 = lat[count / 2];
	res->p99 = lat[(long)(count * 0.99)];
	return 0;
}

static int server_addr(const char *addr, struct sockaddr_in *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons(53);
	return inet_pton(AF_INET, addr, &sa->sin_addr) == 1 ? 0 : -1;
}

/* cycle PROTO NAME BLOCK ROUNDS TIMEOUT_MS CGROUP,SERVER ...: every variant
 * in turn (order rotated each round), BLOCK queries each, after moving
 * this process into the variant's cgroup (the directory's cgroup.procs). */
static int cycle(int argc, char **argv)
{
	long block = atol(argv[4]), rounds = atol(argv[5]), r, k;
	int tcp = !strcmp(argv[2], "tcp"), timeout_ms = atoi(argv[6]), n = argc - 7, i;
	char (*procs)[512] = calloc((size_t)n, sizeof(*procs));
	struct sockaddr_in *sa = calloc((size_t)n, sizeof(*sa));
	double *lat = calloc((size_t)block, sizeof(*lat));
	struct result res;

	for (i = 0; i < n; i++) {
		char *spec = strdup(argv[7 + i]), *comma = strrchr(spec, ',');

		if (!comma || server_addr(comma + 1, &sa[i]) != 0) {
			fprintf(stderr, "bad variant %s (CGROUP,SERVER)\n", argv[7 + i]);
			return 2;
		}
		*comma = 0;
		snprintf(procs[i], sizeof(procs[i]), "%s/cgroup.procs", spec);
	}
	for (r = 0; r < rounds; r++) {
		for (k = 0; k < n; k++) {
			int v = (int)((k + r) % n);
			FILE *f = fopen(procs[v], "w");

			if (!f || fprintf(f, "0\n") < 0 || fclose(f) != 0) {
				perror(procs[v]);
				return 2;
			}
			if (run(tcp, &sa[v], argv[3], block, timeout_ms, lat, &res) != 0)
				return 2;
			printf("round=%ld variant=%d ok=%ld bad=%ld timeouts=%ld p50_us=%.1f p99_us=%.1f "
			       "wall_ns=%.0f cpu_ns=%.0f\n", r, v, res.ok, res.bad, res.timeouts, res.p50, res.p99,
			       res.wall_ns, res.cpu_ns);
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa;
	struct result res;
	long count;
	double *lat;

	if (argc >= 8 && !strcmp(argv[1], "cycle"))
		return cycle(argc, argv);
	if (argc != 6 || (strcmp(argv[1], "udp") && strcmp(argv[1], "tcp"))) {
		fprintf(stderr, "usage: dns_rr udp|tcp SERVER NAME COUNT TIMEOUT_MS\n"
			"       dns_rr cycle udp|tcp NAME BLOCK ROUNDS TIMEOUT_MS CGROUP,SERVER ...\n");
		return 2;
	}
	count = atol(argv[4]);
	if (server_addr(argv[2], &sa) != 0 || count < 1) {
		fprintf(stderr, "bad server or count\n");
		return 2;
	}
	lat = calloc((size_t)count, sizeof(*lat));
	if (run(!strcmp(argv[1], "tcp"), &sa, argv[3], count, atoi(argv[5]), lat, &res) != 0)
		return 2;
	printf("ops=%ld ok=%ld bad=%ld timeouts=%ld p50_us=%.1f p99_us=%.1f wall_ns=%.0f ns_per_op=%.1f\n",
	       count, res.ok, res.bad, res.timeouts, res.p50, res.p99, res.wall_ns, res.wall_ns / count);
	return 0;
}
