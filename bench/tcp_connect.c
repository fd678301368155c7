/*
 * tcp_connect: TCP connects, nothing else, and the server that takes them.
 *
 *   tcp_connect client ADDR PORT COUNT    COUNT x (socket, connect, close)
 *       one line out: ops=N errors=E eperm=P ns_per_op=T
 *   tcp_connect probe ADDR PORT           one connect (2 s at most); exit 0 if
 *       it worked, 3 on EPERM, 5 on ECONNREFUSED, 4 on another error
 *   tcp_connect server ADDR PORT          accept and close, forever
 *   tcp_connect cycle BLOCK ROUNDS NETNS,CGROUP,ADDR,PORT ...
 *       every variant in turn (order rotated each round), BLOCK connects each:
 *       the process moves itself into the variant's cgroup (cgroup.procs of
 *       the directory CGROUP) and network namespace (NETNS: a file such as
 *       /run/netns/NAME), then times the block; one line per block:
 *       round=R variant=I cpu_ns=C wall_ns=W errors=E
 *       cpu_ns: CLOCK_PROCESS_CPUTIME_ID over the block (the connects' work
 *       in this process's context, softirq processing of its own packets
 *       included unless the kernel accounts IRQ time apart)
 *
 * The client closes with SO_LINGER 0 (a reset, no TIME_WAIT), so a long
 * run never runs out of ephemeral ports and every connect costs the same:
 * the connect hooks, the route lookup, the SYN / SYN-ACK / ACK over the
 * path and the reset. Built by bench/policy_connect.py with gcc at run time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sched.h>
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

static double ns_of(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

struct variant {
	int netns;
	char procs[512];
	struct sockaddr_in sa;
};

static int cycle(int argc, char **argv)
{
	long block = atol(argv[2]), rounds = atol(argv[3]), r, i, k;
	int n = argc - 4;
	struct variant *v = calloc((size_t)n, sizeof(*v));

	for (i = 0; i < n; i++) {
		char *spec = strdup(argv[4 + i]);
		char *ns = strtok(spec, ","), *cg = strtok(NULL, ","), *addr = strtok(NULL, ","), *port = strtok(NULL, ",");

		if (!ns || !cg || !addr || !port || inet_pton(AF_INET, addr, &v[i].sa.sin_addr) != 1) {
			fprintf(stderr, "bad variant %s\n", argv[4 + i]);
			return 2;
		}
		v[i].sa.sin_family = AF_INET;
		v[i].sa.sin_port = htons(atoi(port));
		v[i].netns = open(ns, O_RDONLY | O_CLOEXEC);
		snprintf(v[i].procs, sizeof(v[i].procs), "%s/cgroup.procs", cg);
		if (v[i].netns < 0) {
			perror(ns);
			return 2;
		}
	}
	for (r = 0; r < rounds; r++) {
		for (k = 0; k < n; k++) {
			struct variant *x = &v[(k + r) % n];
			long errors = 0;
			double c0, w0;
			FILE *f = fopen(x->procs, "w");

			if (!f || fprintf(f, "0\n") < 0 || fclose(f) != 0) {
				perror(x->procs);
				return 2;
			}
			if (setns(x->netns, CLONE_NEWNET) != 0) {
				perror("setns");
				return 2;
			}
			c0 = ns_of(CLOCK_PROCESS_CPUTIME_ID);
			w0 = ns_of(CLOCK_MONOTONIC);
			for (i = 0; i < block; i++)
				errors += one(&x->sa, 0) != 0;
			printf("round=%ld variant=%ld cpu_ns=%.0f wall_ns=%.0f errors=%ld\n", r, (k + r) % n,
			       ns_of(CLOCK_PROCESS_CPUTIME_ID) - c0, ns_of(CLOCK_MONOTONIC) - w0, errors);
			fflush(stdout);
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct timespec t0, t1;
	long count, i, errors = 0, eperm = 0;

	if (argc >= 5 && strcmp(argv[1], "cycle") == 0)
		return cycle(argc, argv);
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
