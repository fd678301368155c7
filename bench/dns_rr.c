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

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(53) };
	long count, i, ok = 0, bad = 0, timeouts = 0;
	int timeout_ms, tcp, fd = -1;
	double *lat, t0, start;
	unsigned char q[512];
	char name[300];

	if (argc != 6 || (strcmp(argv[1], "udp") && strcmp(argv[1], "tcp"))) {
		fprintf(stderr, "usage: dns_rr udp|tcp SERVER NAME COUNT TIMEOUT_MS\n");
		return 2;
	}
	tcp = !strcmp(argv[1], "tcp");
	count = atol(argv[4]);
	timeout_ms = atoi(argv[5]);
	if (inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1 || count < 1) {
		fprintf(stderr, "bad server or count\n");
		return 2;
	}
	lat = calloc((size_t)count, sizeof(*lat));
	if (!tcp && (fd = socket(AF_INET, SOCK_DGRAM, 0)) < 0) {
		perror("socket");
		return 2;
	}
	srand((unsigned)getpid());
	uint16_t id = (uint16_t)rand();
	start = now_ns();
	for (i = 0; i < count; i++) {
		int qn, v;

		snprintf(name, sizeof(name), argv[3], (int)i);
		id++;
		qn = build(q, id, name);
		if (qn < 0) {
			fprintf(stderr, "bad name %s\n", name);
			return 2;
		}
		t0 = now_ns();
		v = tcp ? tcp_one(&sa, q, qn, id, timeout_ms) : udp_one(fd, &sa, q, qn, id, timeout_ms);
		lat[i] = (now_ns() - t0) / 1e3;
		ok += v == 1;
		bad += v == 0;
		timeouts += v == -2;
	}
	double wall = now_ns() - start;
	qsort(lat, (size_t)count, sizeof(*lat), cmp);
	printf("ops=%ld ok=%ld bad=%ld timeouts=%ld p50_us=%.1f p99_us=%.1f wall_ns=%.0f ns_per_op=%.1f\n",
	       count, ok, bad, timeouts, lat[count / 2], lat[(long)(count * 0.99)], wall, wall / count);
	return 0;
}
