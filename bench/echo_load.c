/* echo_load: a fixed load for comparing echo servers, over TCP or TLS.
 *
 * Ping-pong (the default). Opens CONNS connections to HOST:PORT; with --tls
 * each first completes its TLS handshake, all of them before anything is
 * measured. Then each sends SIZE bytes, waits for all SIZE bytes to come back
 * (verified byte for byte), and repeats. After WARMUP seconds it prints
 * "START", counts round trips for DURATION seconds, prints "END", then one
 * result line:
 *
 *   roundtrips=N seconds=S rps=R errors=E conns=C size=B [tls=V cipher=X]
 *
 * --handshakes (connect mode). CONNS slots, each repeatedly: connect, complete
 * the TLS handshake (with --tls), send SIZE bytes and read them back (so that
 * the server really finished its side), send close_notify, close. START and
 * END as above; the result line counts the cycles completed in between:
 *
 *   handshakes=N seconds=S rate=R resumed=K errors=E conns=C size=B [tls=V cipher=X]
 *
 * With --tls-resume each slot offers the session of its previous connection
 * (SSL_get1_session, read after the echo: a TLS 1.3 ticket arrives after the
 * handshake) and K counts the connections the server resumed
 * (SSL_session_reused). errors counts connections that failed; the rest go on.
 *
 * --hold. Opens CONNS connections (at most HOLD_INFLIGHT at a time), each
 * completing its handshake and one SIZE-byte echo, and keeps them open and
 * idle. Prints "HELD" once all are, holds them DURATION seconds (closing
 * all of them when it exits, or when killed), then prints
 *
 *   held=N seconds=S errors=E conns=C size=B [tls=V cipher=X]
 *
 * where S is how long opening them took and E counts connections that failed
 * or that the server closed while held.
 *
 * --linger SECONDS: after the result line, keep
 * the connections open and idle that long before exiting, so that a tracer
 * can detach before the server sees them close.
 *
 * --tls speaks TLS 1.3 only (OpenSSL), without certificate verification unless
 * --ca FILE is given (then the chain and the address HOST are checked). All
 * I/O is non-blocking, driven by epoll: an SSL_read or SSL_write that wants to
 * read or write waits for that, and is retried with the same arguments.
 *
 * Written in C so that the load costs far less CPU than any server under
 * test: the numbers then measure the server, not the load generator.
 * Only for loopback targets; it stops by itself (every phase has a deadline).
 *
 * build: cc -O2 -o echo_load echo_load.c                                    (TCP only)
 *        cc -O2 -DECHO_LOAD_TLS -o echo_load_tls echo_load.c -lssl -lcrypto  (TCP and TLS)
 * The TLS build is a separate binary so that the plain one builds without
 * libssl-dev and stays the exact load of the plain-TCP tables.
 *
 * usage: echo_load [--tls [--ca FILE]] [--handshakes [--tls-resume] | --hold]
 *                  [--linger SECONDS] HOST PORT CONNS SIZE DURATION [WARMUP]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef ECHO_LOAD_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#endif

#define USAGE                                                                 \
    "usage: echo_load [--tls [--ca FILE]] [--handshakes [--tls-resume] | --hold] " \
    "[--linger SECONDS] HOST PORT CONNS SIZE DURATION [WARMUP]\n"
#define TLS_BUILD "cc -O2 -DECHO_LOAD_TLS -o echo_load_tls echo_load.c -lssl -lcrypto"
/* Ping-pong: how long all the handshakes may take before the load gives up. */
#define HANDSHAKE_PHASE_S 60.0
/* --hold: how long opening every connection may take. */
#define HOLD_OPEN_S 120.0
/* --hold: connections being opened at once (the rest wait their turn). */
#define HOLD_INFLIGHT 100
/* How many failures are described on stderr (all are counted). */
#define MAX_COMPLAINTS 5

enum mode { PINGPONG, HANDSHAKES, HOLD };
enum state { CONNECTING, HANDSHAKE, ECHO, IDLE };
/* What an I/O step returned besides a byte count. */
enum { WOULD_BLOCK = -1, FAILED = -2 };

struct conn {
    int fd;         /* -1 when closed */
    uint32_t gen;   /* bumped on every (re)open: events of an old descriptor are ignored */
    int state;
    uint32_t events; /* epoll interest now */
    uint32_t want;   /* what the next step waits for: EPOLLIN or EPOLLOUT */
    int sending;     /* the current message is not all sent yet */
    size_t sent;     /* bytes of it sent (TCP; SSL_write sends all or nothing) */
    size_t got;      /* bytes of the current reply received */
    int seed;        /* first byte of the current message */
#ifdef ECHO_LOAD_TLS
    SSL *ssl;
    SSL_SESSION *session; /* --tls-resume: the session of this slot's last connection */
#endif
};

static int use_tls, mode = PINGPONG, resume;
static const char *ca_file, *host;
static struct sockaddr_in addr;
static int ep;
static struct conn *conns;
static size_t size;
static char *msgs, *rbuf;
static int complaints;
static int started;                /* inside the measured window */
static long long roundtrips, handshakes, resumed, errors, handshaken, held;
static char tls_version[32], tls_cipher[64];
static double linger;
#ifdef ECHO_LOAD_TLS
static SSL_CTX *ctx;
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fill(char *buf, size_t size, int seed) {
    for (size_t i = 0; i < size; i++) buf[i] = (char)((seed + i) & 0xff);
}

static void complain(const char *what, const char *why) {
    if (complaints++ < MAX_COMPLAINTS) fprintf(stderr, "echo_load: %s: %s\n", what, why);
}

static void die(const char *what, const char *why) {
    fprintf(stderr, "echo_load: %s: %s\n", what, why);
    exit(1);
}

static uint64_t key(struct conn *c) { return (uint64_t)c->gen << 32 | (uint64_t)(c - conns); }

#ifdef ECHO_LOAD_TLS
/* Why the last TLS call failed: OpenSSL's error queue, else errno. */
static const char *tls_why(int code) {
    static char text[256];
    unsigned long e = ERR_get_error();
    if (e) {
        ERR_error_string_n(e, text, sizeof text);
        ERR_clear_error();
        return text;
    }
    if (code == SSL_ERROR_SYSCALL) return errno ? strerror(errno) : "EOF";
    return "TLS error";
}

/* WOULD_BLOCK (c->want set) for WANT_READ/WANT_WRITE, else FAILED (*why set). */
static int tls_wait(struct conn *c, int r, const char **why) {
    int code = SSL_get_error(c->ssl, r);
    if (code == SSL_ERROR_WANT_READ) {
        c->want = EPOLLIN;
        return WOULD_BLOCK;
    }
    if (code == SSL_ERROR_WANT_WRITE) {
        c->want = EPOLLOUT;
        return WOULD_BLOCK;
    }
    *why = code == SSL_ERROR_ZERO_RETURN ? "close_notify" : tls_why(code);
    return FAILED;
}

/* Without --ca: accept any certificate without building or checking its chain (with
 * SSL_VERIFY_NONE alone OpenSSL still verifies it, then ignores the result). The
 * handshake still checks the server's signature (CertificateVerify). */
static int accept_any(X509_STORE_CTX *store, void *arg) {
    (void)store;
    (void)arg;
    return 1;
}

static void tls_setup(void) {
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die("SSL_CTX_new", tls_why(0));
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) die(ca_file, tls_why(0));
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_cert_verify_callback(ctx, accept_any, NULL);
    }
    /* Thousands of idle connections: free each one's record buffers while it is idle. */
    if (mode == HOLD) SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}

static void tls_start(struct conn *c) {
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) die("SSL_new", tls_why(0));
    if (ca_file && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), host) != 1)
        die("X509_VERIFY_PARAM_set1_ip_asc", tls_why(0));
    if (resume && c->session) SSL_set_session(c->ssl, c->session);
    SSL_set_connect_state(c->ssl);
}

/* After a connection's echo: keep its newest session for the next one (--tls-resume). */
static void tls_keep_session(struct conn *c) {
    SSL_SESSION *s = SSL_get1_session(c->ssl);
    if (s && SSL_SESSION_is_resumable(s)) {
        if (c->session) SSL_SESSION_free(c->session);
        c->session = s;
    } else if (s) {
        SSL_SESSION_free(s);
    }
}

static void tls_note_details(struct conn *c) {
    if (!tls_version[0]) {
        snprintf(tls_version, sizeof tls_version, "%s", SSL_get_version(c->ssl));
        snprintf(tls_cipher, sizeof tls_cipher, "%s", SSL_get_cipher_name(c->ssl));
    }
}
#endif

/* Read up to n bytes: the count, 0 at EOF, WOULD_BLOCK (c->want says for what) or FAILED. */
static ssize_t conn_read(struct conn *c, char *buf, size_t n, const char **why) {
#ifdef ECHO_LOAD_TLS
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, buf, (int)n);
        return r > 0 ? r : tls_wait(c, r, why);
    }
#endif
    ssize_t r = recv(c->fd, buf, n, 0);
    if (r >= 0) return r;
    if (errno == EAGAIN || errno == EINTR) {
        c->want = EPOLLIN;
        return WOULD_BLOCK;
    }
    *why = strerror(errno);
    return FAILED;
}

/* Send the rest of the current message: 1 when it is all sent, WOULD_BLOCK or FAILED. */
static int send_message(struct conn *c, const char **why) {
    const char *msg = msgs + (size_t)c->seed * size;
    c->sending = 1;
#ifdef ECHO_LOAD_TLS
    if (c->ssl) {
        /* Without SSL_MODE_ENABLE_PARTIAL_WRITE, SSL_write sends all or, after
         * WANT_READ/WANT_WRITE, must be called again with the same arguments. */
        ERR_clear_error();
        int r = SSL_write(c->ssl, msg, (int)size);
        if (r <= 0) return tls_wait(c, r, why);
        c->sending = 0;
        c->want = EPOLLIN;
        return 1;
    }
#endif
    while (c->sent < size) {
        ssize_t r = send(c->fd, msg + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                c->want = EPOLLOUT;
                return WOULD_BLOCK;
            }
            *why = strerror(errno);
            return FAILED;
        }
        c->sent += (size_t)r;
    }
    c->sending = 0;
    c->sent = 0;
    c->want = EPOLLIN;
    return 1;
}

/* Drive the TLS handshake: 1 when it is done, WOULD_BLOCK or FAILED. */
static int handshake(struct conn *c, const char **why) {
#ifdef ECHO_LOAD_TLS
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r != 1) return tls_wait(c, r, why);
    tls_note_details(c);
#else
    (void)c;
    (void)why;
#endif
    return 1;
}

static void watch(struct conn *c) {
    if (c->fd >= 0 && c->want != c->events) {
        struct epoll_event ev = {.events = c->want, .data.u64 = key(c)};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->events = c->want;
    }
}

static void close_conn(struct conn *c) {
#ifdef ECHO_LOAD_TLS
    if (c->ssl) {
        SSL_shutdown(c->ssl); /* sends close_notify; the server's answer is not awaited */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
#endif
    close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
}

/* The connection is up (TCP connected): start its handshake, or its echo without TLS. */
static int connected(struct conn *c, const char **why);

/* Open a connection in slot c, non-blocking (--handshakes and --hold). */
static void open_conn(struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) die("socket", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->gen++;
    c->got = c->sent = 0;
    c->sending = 0;
    c->seed = (c->seed + 1) & 0xff;
    const char *why = NULL;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) == 0) {
        if (connected(c, &why) == FAILED) die("connect", why);
    } else if (errno == EINPROGRESS) {
        c->state = CONNECTING;
        c->want = EPOLLOUT;
    } else {
        die("connect", strerror(errno)); /* refused or out of ports: the run is over */
    }
    struct epoll_event ev = {.events = c->want, .data.u64 = key(c)};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    c->events = c->want;
}

static int slots, next_slot; /* --hold: connections opened so far */
static double measured_end;

/* A connection's echo came back whole (--handshakes and --hold). */
static void cycle_done(struct conn *c) {
    if (mode == HOLD) {
        c->state = IDLE;
        c->want = EPOLLIN;
        held++;
        if (next_slot < slots) open_conn(&conns[next_slot++]);
        return;
    }
    if (started) {
        handshakes++;
#ifdef ECHO_LOAD_TLS
        if (c->ssl && SSL_session_reused(c->ssl)) resumed++;
#endif
    }
#ifdef ECHO_LOAD_TLS
    if (resume) tls_keep_session(c);
#endif
    close_conn(c);
    if (now() < measured_end) open_conn(c);
}

/* One step of a connection's state machine on an event: 0, or FAILED with *why set. */
static int progress(struct conn *c, const char **why) {
    ssize_t r;
    switch (c->state) {
    case CONNECTING: {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            *why = strerror(err);
            return FAILED;
        }
        return connected(c, why) == FAILED ? FAILED : 0;
    }
    case HANDSHAKE:
        r = handshake(c, why);
        if (r != 1) return r == FAILED ? FAILED : 0;
        c->state = ECHO;
        c->want = EPOLLIN;
        if (mode == PINGPONG) {
            handshaken++; /* the first message waits until every connection is here */
            return 0;
        }
        c->sending = 1;
        /* fall through */
    case ECHO:
        if (c->sending && (r = send_message(c, why)) != 1) return r == FAILED ? FAILED : 0;
        for (;;) {
            r = conn_read(c, rbuf, size - c->got, why);
            if (r == WOULD_BLOCK) return 0;
            if (r == 0) *why = "EOF";
            if (r <= 0) return FAILED;
            if (memcmp(rbuf, msgs + (size_t)c->seed * size + c->got, (size_t)r) != 0) errors++;
            c->got += (size_t)r;
            if (c->got == size) {
                c->got = 0;
                if (mode != PINGPONG) {
                    cycle_done(c);
                    return 0;
                }
                roundtrips++;
                c->seed = (c->seed + 1) & 0xff;
                if ((r = send_message(c, why)) != 1) return r == FAILED ? FAILED : 0;
            }
            /* TCP: one recv per wakeup (epoll is level-triggered). TLS reads on until it
             * would block: a record already inside OpenSSL wakes no epoll_wait. */
            if (!use_tls) return 0;
        }
    case IDLE:
        r = conn_read(c, rbuf, size, why); /* a late TLS ticket, or the server closing */
        if (r == 0) *why = "the server closed a held connection";
        if (r == 0 || r == FAILED) return FAILED;
        if (r > 0) *why = "bytes on a held connection";
        return r > 0 ? FAILED : 0;
    }
    return 0;
}

static int connected(struct conn *c, const char **why) {
    c->want = EPOLLIN;
#ifdef ECHO_LOAD_TLS
    if (use_tls) {
        tls_start(c);
        c->state = HANDSHAKE;
        return progress(c, why);
    }
#endif
    c->state = ECHO;
    if (mode == PINGPONG) {
        handshaken++;
        return 0;
    }
    c->sending = 1;
    return progress(c, why);
}

/* A connection failed: the ping-pong stops; --handshakes opens the slot again. */
static void failed(struct conn *c, const char *why) {
    if (mode == PINGPONG) die("connection failed", why);
    errors++;
    complain("connection failed", why);
#ifdef ECHO_LOAD_TLS
    if (c->ssl) {
        SSL_free(c->ssl); /* no close_notify after a failure */
        c->ssl = NULL;
    }
#endif
    close(c->fd);
    c->fd = -1;
    if (mode == HANDSHAKES && now() < measured_end) open_conn(c);
    if (mode == HOLD && c->state != IDLE && next_slot < slots) open_conn(&conns[next_slot++]);
}

static struct epoll_event events[1024];

/* Wait up to 100 ms and step every connection that has an event. */
static void poll_once(void) {
    int n = epoll_wait(ep, events, 1024, 100);
    for (int k = 0; k < n; k++) {
        struct conn *c = &conns[events[k].data.u64 & 0xffffffffu];
        if (c->fd < 0 || c->gen != (uint32_t)(events[k].data.u64 >> 32)) continue;
        const char *why = "?";
        if (progress(c, &why) == FAILED)
            failed(c, why);
        else
            watch(c);
    }
}

/* End the result line; with --linger, then keep every connection open a while. */
static void print_tls(void) {
    if (use_tls) printf(" tls=%s cipher=%s", tls_version, tls_cipher);
    printf("\n");
    fflush(stdout);
    if (linger > 0) {
        struct timespec ts = {.tv_sec = (time_t)linger,
                              .tv_nsec = (long)((linger - (time_t)linger) * 1e9)};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR) continue;
    }
}

/* Ping-pong: connect (and handshake) every connection, then measure round trips. */
static int run_pingpong(int nconns, double duration, double warmup) {
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
            fprintf(stderr, "echo_load: connect %d: %s\n", i, strerror(errno));
            return 1;
        }
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
        c->seed = i & 0xff;
        const char *why = "?";
        if (connected(c, &why) == FAILED) die("handshake", why);
        struct epoll_event ev = {.events = c->want, .data.u64 = key(c)};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        c->events = c->want;
    }
    double deadline = now() + HANDSHAKE_PHASE_S;
    while (handshaken < nconns) {
        if (now() >= deadline) {
            fprintf(stderr, "echo_load: %lld of %d handshakes done in %g s\n", handshaken, nconns,
                    HANDSHAKE_PHASE_S);
            return 1;
        }
        poll_once();
    }
    for (int i = 0; i < nconns; i++) {
        const char *why = "?";
        if (send_message(&conns[i], &why) == FAILED) die("first send", why);
        watch(&conns[i]);
    }
    double t0 = now(), start = t0 + warmup, end = start + duration;
    for (;;) {
        double t = now();
        if (!started && t >= start) {
            started = 1;
            roundtrips = 0;
            printf("START\n");
            fflush(stdout);
        }
        if (t >= end) break;
        poll_once();
    }
    double seconds = now() - start;
    printf("END\n");
    printf("roundtrips=%lld seconds=%.3f rps=%.0f errors=%lld conns=%d size=%zu", roundtrips,
           seconds, roundtrips / seconds, errors, nconns, size);
    print_tls();
    return errors ? 1 : 0;
}

/* --handshakes: CONNS slots connecting, shaking hands, echoing and closing, over and over. */
static int run_handshakes(int nconns, double duration, double warmup) {
    double start = now() + warmup;
    measured_end = start + duration;
    for (int i = 0; i < nconns; i++) open_conn(&conns[i]);
    for (;;) {
        double t = now();
        if (!started && t >= start) {
            started = 1;
            printf("START\n");
            fflush(stdout);
        }
        if (t >= measured_end) break;
        poll_once();
    }
    double seconds = now() - start;
    printf("END\n");
    printf("handshakes=%lld seconds=%.3f rate=%.0f resumed=%lld errors=%lld conns=%d size=%zu",
           handshakes, seconds, handshakes / seconds, resumed, errors, nconns, size);
    print_tls();
    return 0; /* failed connections are counted in errors; the caller judges them */
}

/* --hold: open CONNS connections, each with its handshake and one echo, and keep them. */
static int run_hold(int nconns, double duration) {
    double t0 = now(), deadline = t0 + HOLD_OPEN_S;
    slots = nconns;
    measured_end = deadline;
    while (next_slot < slots && next_slot < HOLD_INFLIGHT) open_conn(&conns[next_slot++]);
    while (held < nconns) {
        if (now() >= deadline || (next_slot == slots && held + errors >= nconns)) {
            fprintf(stderr, "echo_load: %lld of %d connections held after %.1f s (%lld failed)\n",
                    held, nconns, now() - t0, errors);
            return 1;
        }
        poll_once();
    }
    double seconds = now() - t0;
    printf("HELD\n");
    fflush(stdout);
    double end = now() + duration;
    while (now() < end) poll_once();
    printf("held=%lld seconds=%.3f errors=%lld conns=%d size=%zu", held, seconds, errors, nconns,
           size);
    print_tls();
    return errors ? 1 : 0;
}

int main(int argc, char **argv) {
    char *args[8];
    int nargs = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tls") == 0) {
            use_tls = 1;
        } else if (strcmp(argv[i], "--ca") == 0 && i + 1 < argc) {
            ca_file = argv[++i];
        } else if (strcmp(argv[i], "--handshakes") == 0) {
            mode = HANDSHAKES;
        } else if (strcmp(argv[i], "--tls-resume") == 0) {
            resume = 1;
        } else if (strcmp(argv[i], "--hold") == 0) {
            mode = HOLD;
        } else if (strcmp(argv[i], "--linger") == 0 && i + 1 < argc) {
            linger = atof(argv[++i]);
        } else if (argv[i][0] == '-' && argv[i][1] == '-') {
            fprintf(stderr, "echo_load: unknown option %s\n" USAGE, argv[i]);
            return 2;
        } else if (nargs < 7) {
            args[nargs++] = argv[i];
        } else {
            fprintf(stderr, USAGE);
            return 2;
        }
    }
    if (nargs < 5) {
        fprintf(stderr, USAGE);
        return 2;
    }
    if ((ca_file || resume) && !use_tls) {
        fprintf(stderr, "echo_load: --ca and --tls-resume need --tls\n");
        return 2;
    }
    if (resume && mode != HANDSHAKES) {
        fprintf(stderr, "echo_load: --tls-resume needs --handshakes\n");
        return 2;
    }
#ifndef ECHO_LOAD_TLS
    if (use_tls) {
        fprintf(stderr, "echo_load: built without TLS; build with: " TLS_BUILD "\n");
        return 2;
    }
#endif
    host = args[0];
    int port = atoi(args[1]), nconns = atoi(args[2]);
    size = (size_t)atol(args[3]);
    double duration = atof(args[4]), warmup = nargs > 5 ? atof(args[5]) : 1.0;
    addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "echo_load: bad IPv4 address %s\n", host);
        return 2;
    }
    if (nconns <= 0 || size == 0 || size > (1 << 20)) {
        fprintf(stderr, "echo_load: CONNS must be positive and SIZE 1 to 1048576\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
#ifdef ECHO_LOAD_TLS
    if (use_tls) tls_setup();
#endif
    conns = calloc((size_t)nconns, sizeof *conns);
    for (int i = 0; i < nconns; i++) conns[i].fd = -1;
    msgs = malloc(256 * size);
    rbuf = malloc(size > 65536 ? size : 65536);
    for (int s = 0; s < 256; s++) fill(msgs + s * size, size, s);
    ep = epoll_create1(0);
    if (mode == HANDSHAKES) return run_handshakes(nconns, duration, warmup);
    if (mode == HOLD) return run_hold(nconns, duration);
    return run_pingpong(nconns, duration, warmup);
}
