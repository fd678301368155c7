/*
 * connect_loop: socket() + connect() + close() of a UDP socket, COUNT times.
 *
 *   connect_loop ADDR PORT COUNT      one line out: ops=N errors=E ns_per_op=T
 *
 * A UDP connect() runs the cgroup connect hook and a route lookup and sends
 * nothing, so no server, no handshake and no TIME_WAIT blur what the hook
 * costs. IPv4 only. Built by bench/policy_cost.py with gcc at run time.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct timespec t0, t1;
	long count, i, errors = 0;

	if (argc != 4 || inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
		fprintf(stderr, "usage: connect_loop ADDR PORT COUNT\n");
		return 2;
	}
	sa.sin_port = htons(atoi(argv[2]));
	count = atol(argv[3]);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < count; i++) {
		int fd = socket(AF_INET, SOCK_DGRAM, 0);

		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
			errors++;
		if (fd >= 0)
			close(fd);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("ops=%ld errors=%ld ns_per_op=%.1f\n", count, errors,
	       ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / count);
	return 0;
}
