/*
 * udp_rr: sequential UDP request/response over an unconnected socket.
 *
 *   udp_rr server ADDR PORT...                 echo every datagram back
 *   udp_rr client ADDR PORT COUNT TIMEOUT_MS   COUNT round trips, one line out
 *
 * The client uses sendto()/recvfrom() on an unconnected socket, the way a DNS
 * stub resolver does: with socket LB every sendto() to the VIP is translated
 * on its own, and the recvmsg hook must make the reply look as if it came
 * from the VIP. The client therefore checks each reply's source against the
 * address it sent to and counts mismatches instead of accepting them.
 *
 * Output (client): one line of key=value pairs, latencies in microseconds.
 * Built by bench/datapath.py with gcc at run time.
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
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 32
#define MAX_PORTS 16

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static struct sockaddr_in parse_addr(const char *addr, const char *port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };

	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
		fprintf(stderr, "bad IPv4 address: %s\n", addr);
		exit(2);
	}
	sa.sin_port = htons((uint16_t)atoi(port));
	return sa;
}

static int serve(const char *addr, int nports, char **ports)
{
	struct pollfd fds[MAX_PORTS];
	char buf[2048];

	if (nports < 1 || nports > MAX_PORTS) {
		fprintf(stderr, "1..%d ports\n", MAX_PORTS);
		return 2;
	}
	for (int i = 0; i < nports; i++) {
		struct sockaddr_in sa = parse_addr(addr, ports[i]);
		int fd = socket(AF_INET, SOCK_DGRAM, 0);

		if (fd < 0)
			die("socket");
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
			die("bind");
		fds[i] = (struct pollfd){ .fd = fd, .events = POLLIN };
	}
	for (;;) {
		if (poll(fds, nports, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		for (int i = 0; i < nports; i++) {
			struct sockaddr_in peer;
			socklen_t plen = sizeof(peer);
			ssize_t n;

			if (!(fds[i].revents & POLLIN))
				continue;
			n = recvfrom(fds[i].fd, buf, sizeof(buf), MSG_DONTWAIT,
				     (struct sockaddr *)&peer, &plen);
			if (n < 0)
				continue;
			/* Reply from the socket it came in on: the source is the backend. */
			sendto(fds[i].fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, plen);
		}
	}
}

static double now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array. */
static double percentile(const double *sorted, long n, double p)
{
	long rank;

	if (n == 0)
		return 0.0;
	rank = (long)(p / 100.0 * n + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return sorted[rank - 1];
}

static int same_endpoint(const struct sockaddr_in *a, const struct sockaddr_in *b)
{
	return a->sin_addr.s_addr == b->sin_addr.s_addr && a->sin_port == b->sin_port;
}

static int client(const char *addr, const char *port, long count, long timeout_ms)
{
	struct sockaddr_in dst = parse_addr(addr, port);
	struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
	long ok = 0, timeouts = 0, wrong_source = 0, stale = 0, send_errors = 0;
	char wrong[64] = "-";
	double *lat, start, elapsed;
	int fd;

	lat = calloc((size_t)count, sizeof(*lat));
	if (!lat)
		die("calloc");
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0)
		die("socket");
	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
		die("setsockopt");

	start = now_us();
	for (long seq = 0; seq < count; seq++) {
		unsigned char req[PAYLOAD] = { 0 }, rep[2048];
		double t0 = now_us();

		memcpy(req, &seq, sizeof(seq));
		if (sendto(fd, req, sizeof(req), 0, (struct sockaddr *)&dst, sizeof(dst)) < 0) {
			send_errors++;
			continue;
		}
		for (;;) {
			struct sockaddr_in src;
			socklen_t slen = sizeof(src);
			ssize_t n = recvfrom(fd, rep, sizeof(rep), 0, (struct sockaddr *)&src, &slen);
			long got;

			if (n < 0) {
				if (errno == EINTR)
					continue;
				timeouts++; /* EAGAIN after SO_RCVTIMEO, or an ICMP error */
				break;
			}
			if (!same_endpoint(&src, &dst)) {
				if (wrong_source++ == 0)
					snprintf(wrong, sizeof(wrong), "%s:%u",
						 inet_ntoa(src.sin_addr), ntohs(src.sin_port));
				break;
			}
			if (n < (ssize_t)sizeof(got)) {
				stale++;
				continue;
			}
			memcpy(&got, rep, sizeof(got));
			if (got != seq) { /* a late reply to an earlier, timed-out request */
				stale++;
				continue;
			}
			lat[ok++] = now_us() - t0;
			break;
		}
	}
	elapsed = (now_us() - start) / 1e6;

	qsort(lat, (size_t)ok, sizeof(*lat), cmp_double);
	printf("sent=%ld ok=%ld timeouts=%ld wrong_source=%ld first_wrong_source=%s stale=%ld "
	       "send_errors=%ld elapsed_s=%.3f rate=%.1f p50_us=%.1f p99_us=%.1f\n",
	       count, ok, timeouts, wrong_source, wrong, stale, send_errors, elapsed,
	       elapsed > 0 ? ok / elapsed : 0.0, percentile(lat, ok, 50), percentile(lat, ok, 99));
	free(lat);
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && strcmp(argv[1], "server") == 0)
		return serve(argv[2], argc - 3, argv + 3);
	if (argc == 6 && strcmp(argv[1], "client") == 0)
		return client(argv[2], argv[3], atol(argv[4]), atol(argv[5]));
	fprintf(stderr, "usage: %s server ADDR PORT... | client ADDR PORT COUNT TIMEOUT_MS\n", argv[0]);
	return 2;
}
