/*
 * classic_server.c - the rendezvous server of the original C demo, reconstructed.
 *
 * The reference that `rendezvous --classic` (rendezvous/src/classic.rs) must match
 * byte for byte. The first client to connect gets "first\n" and its NUL, and stays
 * connected. When a second client connects, it gets "<ip1> <port1> <port2>\n\0"
 * (client1's address as seen here, then its own seen port), client1 gets
 * "<ip2> <port2>\n\0", and both connections are closed. Then the next pair.
 *
 * Like the original it reads nothing from the clients and does not notice a client1
 * that left before client2 came (the Rust server does). Additions for testing: port 0
 * picks a free port, and the bound port is printed as "listening on PORT".
 *
 *   cc -O2 -Wall -Wextra -o classic_server classic_server.c
 *   ./classic_server [PORT]        (default 8877)
 */
#define _DEFAULT_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define DEFAULT_PORT 8877

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* Sends a line with its terminating NUL, as the demo does. */
static int send_line(int fd, const char *line)
{
	size_t len = strlen(line) + 1, done = 0;

	while (done < len) {
		ssize_t n = send(fd, line + done, len - done, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		done += (size_t)n;
	}
	return 0;
}

static int accept_client(int s, struct sockaddr_in *addr)
{
	for (;;) {
		socklen_t len = sizeof *addr;
		int c = accept(s, (struct sockaddr *)addr, &len);
		if (c >= 0)
			return c;
		if (errno != EINTR && errno != ECONNABORTED)
			perror("accept");
	}
}

int main(int argc, char **argv)
{
	long port = DEFAULT_PORT;
	struct sockaddr_in addr;
	socklen_t len = sizeof addr;
	int s, one = 1;

	if (argc > 2) {
		fprintf(stderr, "usage: %s [PORT]\n", argv[0]);
		return 2;
	}
	if (argc == 2) {
		char *end;
		port = strtol(argv[1], &end, 10);
		if (*argv[1] == '\0' || *end != '\0' || port < 0 || port > 65535) {
			fprintf(stderr, "%s: bad port: %s\n", argv[0], argv[1]);
			return 2;
		}
	}
	/* A client that vanished must not kill the server when we write to it. */
	signal(SIGPIPE, SIG_IGN);

	s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		die("socket");
	if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
		die("setsockopt");
	memset(&addr, 0, sizeof addr);
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_ANY);
	addr.sin_port = htons((unsigned short)port);
	if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0)
		die("bind");
	if (listen(s, 16) < 0)
		die("listen");
	if (getsockname(s, (struct sockaddr *)&addr, &len) < 0)
		die("getsockname");
	printf("listening on %u\n", ntohs(addr.sin_port));
	fflush(stdout);

	for (;;) {
		struct sockaddr_in a1, a2;
		char ip1[INET_ADDRSTRLEN], ip2[INET_ADDRSTRLEN], line[64];
		int c1, c2;

		c1 = accept_client(s, &a1);
		if (send_line(c1, "first\n") < 0) {
			perror("send");
			close(c1);
			continue;
		}
		c2 = accept_client(s, &a2);
		inet_ntop(AF_INET, &a1.sin_addr, ip1, sizeof ip1);
		inet_ntop(AF_INET, &a2.sin_addr, ip2, sizeof ip2);

		snprintf(line, sizeof line, "%s %u %u\n", ip1, ntohs(a1.sin_port),
			 ntohs(a2.sin_port));
		if (send_line(c2, line) < 0)
			perror("send to client2");
		snprintf(line, sizeof line, "%s %u\n", ip2, ntohs(a2.sin_port));
		if (send_line(c1, line) < 0)
			perror("send to client1");
		fprintf(stderr, "paired %s:%u with %s:%u\n", ip1, ntohs(a1.sin_port), ip2,
			ntohs(a2.sin_port));
		close(c1);
		close(c2);
	}
}
