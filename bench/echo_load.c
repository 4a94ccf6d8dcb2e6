/* echo_load: a fixed ping-pong load for comparing echo servers.
 *
 * Opens CONNS TCP connections to HOST:PORT; each sends SIZE bytes, waits for
 * all SIZE bytes to come back (verified byte for byte), and repeats. After
 * WARMUP seconds it prints "START", counts round trips for DURATION seconds,
 * prints "END", then one result line:
 *
 *   roundtrips=N seconds=S rps=R errors=E conns=C size=B
 *
 * Written in C so that the load costs far less CPU than any server under
 * test: the numbers then measure the server, not the load generator.
 * Only for loopback targets; it stops by itself after WARMUP + DURATION.
 *
 * build: cc -O2 -o echo_load echo_load.c
 * usage: echo_load HOST PORT CONNS SIZE DURATION [WARMUP]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    size_t got;   /* bytes of the current reply received */
    int seed;     /* first byte of the current message */
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill(char *buf, size_t size, int seed) {
    for (size_t i = 0; i < size; i++) buf[i] = (char)((seed + i) & 0xff);
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT CONNS SIZE DURATION [WARMUP]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconns = atoi(argv[3]);
    size_t size = (size_t)atol(argv[4]);
    double duration = atof(argv[5]), warmup = argc > 6 ? atof(argv[6]) : 1.0;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "echo_load: bad IPv4 address %s\n", host);
        return 2;
    }
    struct conn *conns = calloc(nconns, sizeof *conns);
    char *msgs = malloc(256 * size), *rbuf = malloc(size > 65536 ? size : 65536);
    for (int s = 0; s < 256; s++) fill(msgs + s * size, size, s);
    int ep = epoll_create1(0);
    for (int i = 0; i < nconns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            fprintf(stderr, "echo_load: connect %d: %s\n", i, strerror(errno));
            return 1;
        }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        conns[i] = (struct conn){.fd = fd, .got = 0, .seed = i & 0xff};
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    for (int i = 0; i < nconns; i++) {
        if (send(conns[i].fd, msgs + conns[i].seed * size, size, 0) != (ssize_t)size) {
            fprintf(stderr, "echo_load: short first send\n");
            return 1;
        }
    }
    double t0 = now(), start = t0 + warmup, end = start + duration;
    int started = 0;
    long long roundtrips = 0, errors = 0;
    struct epoll_event events[1024];
    for (;;) {
        double t = now();
        if (!started && t >= start) {
            started = 1;
            roundtrips = 0;
            printf("START\n");
            fflush(stdout);
        }
        if (t >= end) break;
        int n = epoll_wait(ep, events, 1024, 100);
        for (int k = 0; k < n; k++) {
            struct conn *c = events[k].data.ptr;
            ssize_t r = recv(c->fd, rbuf, size - c->got, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                fprintf(stderr, "echo_load: connection closed: %s\n", r ? strerror(errno) : "EOF");
                return 1;
            }
            if (memcmp(rbuf, msgs + c->seed * size + c->got, r) != 0) errors++;
            c->got += r;
            if (c->got == size) {
                roundtrips++;
                c->got = 0;
                c->seed = (c->seed + 1) & 0xff;
                if (send(c->fd, msgs + c->seed * size, size, 0) != (ssize_t)size) {
                    fprintf(stderr, "echo_load: short send\n");
                    return 1;
                }
            }
        }
    }
    double seconds = now() - start;
    printf("END\n");
    printf("roundtrips=%lld seconds=%.3f rps=%.0f errors=%lld conns=%d size=%zu\n",
           roundtrips, seconds, roundtrips / seconds, errors, nconns, size);
    return errors ? 1 : 0;
}
