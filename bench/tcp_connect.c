/*
 * tcp_connect: TCP connects, nothing else, and the server that takes them.
 *
 *   tcp_connect client ADDR PORT COUNT    COUNT x (socket, connect, close)
 *       one line out: ops=N errors=E eperm=P ns_per_op=T
 *   tcp_connect probe ADDR PORT           one connect (2 s at most); exit 0 if
 *       it worked, 3 on EPERM, 5 on ECONNREFUSED, 4 on another error
 *   tcp_connect server ADDR PORT          accept and close, forever
 *
 * The client closes with SO_LINGER 0 (a reset, no TIME_WAIT), so a long
 * run never runs out of ephemeral ports and every connect costs the same:
 * the connect hooks, the route lookup, the SYN / SYN-ACK / ACK over the
 * path and the reset. Built by bench/policy_connect.py with gcc at run time.
 */
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

/* timeout_s > 0: connect() gives up after it (a probe of an address no one answers). */
static int one(const struct sockaddr_in *sa, int timeout_s)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	struct timeval tv = { .tv_sec = timeout_s };
	int fd = socket(AF_INET, SOCK_STREAM, 0), err = 0;

	if (fd < 0)
		return errno;
	if (timeout_s)
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0)
		err = errno;
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
	return err;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct timespec t0, t1;
	long count, i, errors = 0, eperm = 0;

	if (argc < 4 || inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1) {
		fprintf(stderr, "usage: tcp_connect client|probe|server ADDR PORT [COUNT]\n");
		return 2;
	}
	sa.sin_port = htons(atoi(argv[3]));
	if (strcmp(argv[1], "server") == 0) {
		int one_ = 1, ls = socket(AF_INET, SOCK_STREAM, 0);

		setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one_, sizeof(one_));
		if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 4096)) {
			perror("bind/listen");
			return 1;
		}
		for (;;) {
			int c = accept(ls, NULL, NULL);

			if (c >= 0)
				close(c);
		}
	}
	if (strcmp(argv[1], "probe") == 0) {
		int err = one(&sa, 2);

		printf("errno=%d (%s)\n", err, err ? strerror(err) : "ok");
		return err == 0 ? 0 : err == EPERM ? 3 : err == ECONNREFUSED ? 5 : 4;
	}
	if (argc != 5)
		return 2;
	count = atol(argv[4]);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < count; i++) {
		int err = one(&sa, 0);

		if (err)
			errors++;
		if (err == EPERM)
			eperm++;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("ops=%ld errors=%ld eperm=%ld ns_per_op=%.1f\n", count, errors, eperm,
	       ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / count);
	return 0;
}
