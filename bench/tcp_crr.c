/*
 * tcp_crr: sequential TCP connect + request + response + close.
 *
 *   tcp_crr ADDR PORT COUNT     COUNT cycles, one line out
 *
 * One connection at a time, each timed from socket() to close(): unlike
 * wrk's latency (which starts after the handshake), this includes connect(),
 * where socket LB translates and where DNAT handles the SYN. The request is
 * a plain HTTP/1.1 GET with `Connection: close`; the reply must start with
 * "HTTP/1.1 200" and is read to EOF.
 *
 * Output: one line of key=value pairs, latencies in microseconds.
 * Built by bench/datapath.py with gcc at run time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

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

enum outcome { OK, CONNECT_ERR, IO_ERR, BAD_REPLY };

/* One full cycle; the caller times it. */
static enum outcome one_cycle(const struct sockaddr_in *dst)
{
	struct timeval tv = { .tv_sec = 3 };
	char buf[4096];
	size_t got = 0;
	enum outcome res = OK;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		return CONNECT_ERR;
	/* Bounded waits: connect() honours SO_SNDTIMEO. */
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (const struct sockaddr *)dst, sizeof(*dst)) < 0) {
		res = CONNECT_ERR;
		goto out;
	}
	if (write(fd, REQUEST, sizeof(REQUEST) - 1) != (ssize_t)(sizeof(REQUEST) - 1)) {
		res = IO_ERR;
		goto out;
	}
	for (;;) {
		ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);

		if (n == 0)
			break;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			res = IO_ERR;
			goto out;
		}
		got += (size_t)n;
		if (got == sizeof(buf) - 1)
			got = 16; /* keep the status line, drop an unexpectedly long body */
	}
	if (got < 12 || memcmp(buf, "HTTP/1.1 200", 12) != 0)
		res = BAD_REPLY;
out:
	close(fd);
	return res;
}

int main(int argc, char **argv)
{
	struct sockaddr_in dst = { .sin_family = AF_INET };
	long count, ok = 0, errors[4] = { 0 };
	double *lat, start, elapsed;

	if (argc != 4) {
		fprintf(stderr, "usage: %s ADDR PORT COUNT\n", argv[0]);
		return 2;
	}
	if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
		fprintf(stderr, "bad IPv4 address: %s\n", argv[1]);
		return 2;
	}
	dst.sin_port = htons((unsigned short)atoi(argv[2]));
	count = atol(argv[3]);
	lat = calloc((size_t)(count > 0 ? count : 1), sizeof(*lat));
	if (!lat) {
		perror("calloc");
		return 2;
	}

	start = now_us();
	for (long i = 0; i < count; i++) {
		double t0 = now_us();
		enum outcome res = one_cycle(&dst);

		if (res == OK)
			lat[ok++] = now_us() - t0;
		else
			errors[res]++;
	}
	elapsed = (now_us() - start) / 1e6;

	qsort(lat, (size_t)ok, sizeof(*lat), cmp_double);
	printf("sent=%ld ok=%ld connect_errors=%ld io_errors=%ld bad_replies=%ld elapsed_s=%.3f "
	       "rate=%.1f p50_us=%.1f p99_us=%.1f\n",
	       count, ok, errors[CONNECT_ERR], errors[IO_ERR], errors[BAD_REPLY], elapsed,
	       elapsed > 0 ? ok / elapsed : 0.0, percentile(lat, ok, 50), percentile(lat, ok, 99));
	free(lat);
	return 0;
}
