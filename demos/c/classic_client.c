/*
 * classic_client.c - the client of the original C demo, reconstructed.
 *
 * The reference that `peer --classic` (peer/src/classic.rs, where the NAT reasoning
 * is written down) must interoperate with. The server's first line decides the role:
 *
 *   "first\n\0"                  client1: wait for "<ip2> <port2>\n\0", connect to
 *                                client2 up to 10 times one second apart, then send
 *                                "Hello, world\n\0" once a second.
 *   "<ip1> <port1> <port2>\n\0"  client2: connect once from port2 to ip1:port1
 *                                (expected to fail: it opens our NAT toward client1),
 *                                listen on port2 with SO_REUSEADDR, accept client1 and
 *                                print what it sends until it closes the connection.
 *
 * The server connection is made from a socket with SO_REUSEADDR and SO_REUSEPORT, so
 * that client2 can listen on the same port afterwards. Client1 dials from a fresh
 * socket, as the original did.
 *
 * Additions for testing: a message count (third argument, or CLASSIC_COUNT in the
 * environment; 0 or none = forever) after which client1 closes and exits 0; client2
 * exits 0 when the connection closes. Connects give up after one second instead of
 * the kernel's two minutes, and client2 waits at most 30 s for client1. Client2
 * prints the messages without their NULs, however TCP splits or joins them.
 *
 *   cc -O2 -Wall -Wextra -o classic_client classic_client.c
 *   ./classic_client SERVER_IP [PORT [COUNT]]      (default port 8877)
 */
#define _DEFAULT_SOURCE

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define DEFAULT_PORT 8877
#define MAX_LINE 256
#define ATTEMPTS 10
#define ACCEPT_TIMEOUT_MS 30000

static const char message[] = "Hello, world\n"; /* sent with its NUL */

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static long parse_number(const char *text, long max, const char *what)
{
	char *end;
	long n = strtol(text, &end, 10);

	if (*text == '\0' || *end != '\0' || n < 0 || n > max) {
		fprintf(stderr, "classic_client: bad %s: %s\n", what, text);
		exit(2);
	}
	return n;
}

static void set_reuse(int fd)
{
	int one = 1;

	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
		die("setsockopt SO_REUSEADDR");
#ifdef SO_REUSEPORT
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
		die("setsockopt SO_REUSEPORT");
#endif
}

static void bind_port(int fd, int port)
{
	struct sockaddr_in addr;

	memset(&addr, 0, sizeof addr);
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_ANY);
	addr.sin_port = htons((unsigned short)port);
	if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
		die("bind");
}

static void make_addr(struct sockaddr_in *addr, const char *ip, int port)
{
	memset(addr, 0, sizeof *addr);
	addr->sin_family = AF_INET;
	addr->sin_port = htons((unsigned short)port);
	if (inet_pton(AF_INET, ip, &addr->sin_addr) != 1) {
		fprintf(stderr, "classic_client: not an IPv4 address: %s\n", ip);
		exit(1);
	}
}

/* connect() that gives up after timeout_s seconds (Linux honours SO_SNDTIMEO). */
static int connect_within(int fd, const struct sockaddr_in *to, int timeout_s)
{
	struct timeval tv = { timeout_s, 0 }, none = { 0, 0 };
	int r;

	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	r = connect(fd, (const struct sockaddr *)to, sizeof *to);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
	return r;
}

/* Reads one line up to its NUL, one byte at a time so as not to read past it. */
static void read_line(int fd, char *line)
{
	size_t len = 0;

	for (;;) {
		char c;
		ssize_t n = recv(fd, &c, 1, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("recv from server");
		if (n == 0) {
			fprintf(stderr, "classic_client: the server closed the connection\n");
			exit(1);
		}
		if (len == MAX_LINE - 1) {
			fprintf(stderr, "classic_client: line from the server too long\n");
			exit(1);
		}
		line[len++] = c;
		if (c == '\0')
			return;
	}
}

static int send_all(int fd, const char *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = send(fd, buf + done, len - done, 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		done += (size_t)n;
	}
	return 0;
}

static int client1(const char *ip2, int port2, long count)
{
	struct sockaddr_in to;
	int fd = -1, attempt;
	long sent;

	make_addr(&to, ip2, port2);
	for (attempt = 1; attempt <= ATTEMPTS; attempt++) {
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0)
			die("socket");
		if (connect_within(fd, &to, 1) == 0)
			break;
		fprintf(stderr, "client1: attempt %d: connect to %s:%d: %s\n", attempt, ip2,
			port2, strerror(errno));
		close(fd);
		fd = -1;
		if (attempt < ATTEMPTS)
			sleep(1);
	}
	if (fd < 0) {
		fprintf(stderr, "client1: could not reach client2 after %d attempts\n", ATTEMPTS);
		return 1;
	}
	fprintf(stderr, "client1: connected to %s:%d\n", ip2, port2);
	for (sent = 0; count == 0 || sent < count; sent++) {
		if (sent > 0)
			sleep(1);
		if (send_all(fd, message, sizeof message) < 0)
			die("send to client2");
	}
	close(fd);
	return 0;
}

static int client2(const char *ip1, int port1, int port2)
{
	struct sockaddr_in to, from;
	socklen_t len = sizeof from;
	struct pollfd pfd;
	char buf[4096];
	int fd, c;

	/* The punch: opens our NAT toward client1. Expected to fail. */
	make_addr(&to, ip1, port1);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	set_reuse(fd);
	bind_port(fd, port2);
	if (connect_within(fd, &to, 1) < 0)
		fprintf(stderr, "client2: punch to %s:%d: %s (expected)\n", ip1, port1,
			strerror(errno));
	close(fd);

	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		die("socket");
	set_reuse(fd);
	bind_port(fd, port2);
	if (listen(fd, 1) < 0)
		die("listen");
	fprintf(stderr, "client2: listening on %d\n", port2);
	pfd.fd = fd;
	pfd.events = POLLIN;
	if (poll(&pfd, 1, ACCEPT_TIMEOUT_MS) <= 0) {
		fprintf(stderr, "client2: client1 did not connect\n");
		return 1;
	}
	c = accept(fd, (struct sockaddr *)&from, &len);
	if (c < 0)
		die("accept");
	close(fd);

	for (;;) {
		ssize_t n = recv(c, buf, sizeof buf, 0), i, start = 0;
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("recv from client1");
		if (n == 0)
			break;
		for (i = 0; i <= n; i++) {
			if (i == n || buf[i] == '\0') {
				fwrite(buf + start, 1, (size_t)(i - start), stdout);
				start = i + 1;
			}
		}
		fflush(stdout);
	}
	close(c);
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in server;
	char line[MAX_LINE], ip[INET_ADDRSTRLEN];
	int port = DEFAULT_PORT, port1, port2, s;
	long count = 0;
	const char *env = getenv("CLASSIC_COUNT");

	if (argc < 2 || argc > 4) {
		fprintf(stderr, "usage: %s SERVER_IP [PORT [COUNT]]\n", argv[0]);
		return 2;
	}
	if (argc >= 3)
		port = (int)parse_number(argv[2], 65535, "port");
	if (argc == 4)
		count = parse_number(argv[3], 1000000000L, "count");
	else if (env != NULL && *env != '\0')
		count = parse_number(env, 1000000000L, "CLASSIC_COUNT");
	signal(SIGPIPE, SIG_IGN);

	make_addr(&server, argv[1], port);
	s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0)
		die("socket");
	set_reuse(s);
	bind_port(s, 0);
	if (connect(s, (struct sockaddr *)&server, sizeof server) < 0)
		die("connect to server");

	read_line(s, line);
	if (strcmp(line, "first\n") == 0) {
		fprintf(stderr, "first: waiting for a second client\n");
		read_line(s, line);
		close(s);
		if (sscanf(line, "%15s %d", ip, &port2) != 2 || port2 < 1 || port2 > 65535) {
			fprintf(stderr, "classic_client: bad line from the server: %s", line);
			return 1;
		}
		return client1(ip, port2, count);
	}
	close(s);
	if (sscanf(line, "%15s %d %d", ip, &port1, &port2) != 3 || port1 < 1 ||
	    port1 > 65535 || port2 < 1 || port2 > 65535) {
		fprintf(stderr, "classic_client: bad line from the server: %s", line);
		return 1;
	}
	return client2(ip, port1, port2);
}
