// The kernel's own cost of sending MQTT fan-out frames over loopback, without a broker.
//
// Writes pre-built QoS 0 PUBLISH frames (topic "rcb/12345/t/0", as ringcast-bench's fan-out,
// PAYLOAD bytes of payload) to CONNS loopback TCP sockets the way ringcast's plain TCP writer
// does: round robin over the sockets, one non-blocking sendmsg of a run of frames each, a
// socket that is full skipped until poll says it has room. A reader thread on another CPU
// drains every socket (epoll, reads of 256 KiB, no parsing). Prints frames/s and wall ns per
// frame: with the sender's CPU busy all the time (the usual case: loopback's receive
// processing runs on the sender's CPU too), that is the sender's whole cost per frame, the
// bound a broker on one CPU cannot beat with this way of writing.
//
//   gcc -O2 -pthread -o /tmp/ksb scripts/kernel-send-bound.c          (add -DHAVE_LIBURING
//   -luring for --uring)
//   /tmp/ksb PAYLOAD [options]       e.g. /tmp/ksb 256 --run-bytes 65536 --mode copy
//
// Options:
//   --conns N         sockets (10)
//   --run-bytes B     bytes per sendmsg, whole frames (96 KiB: ringcast's flat buffer)
//   --mode M          flat: one iovec per run from a pre-built buffer;
//                     copy: frames memcpy'd into one buffer first, then one iovec (ringcast's
//                           gather_flat);
//                     iov2: two iovecs per frame (header, payload), no copy
//   --sndbuf B        SO_SNDBUF (kernel default when absent)
//   --no-nodelay      leave Nagle on (ringcast sets TCP_NODELAY)
//   --more            MSG_MORE on every sendmsg but the last of a round (cork-like)
//   --uring           io_uring IORING_OP_SENDMSG instead of the syscall (HAVE_LIBURING)
//   --seconds S       duration (3)
//   --cpus S,R        sender and reader CPUs (0,1)
//   --spin            the reader polls its sockets without sleeping (a generator that is
//                     always busy: the sender then seldom pays for waking it)
//
// Output: one line, key=value (payload, frame, mode, run_bytes, frames_per_s, ns_per_frame,
// mb_per_s, sender_cpu: the sending thread's CPU time over wall time, under 100% when it
// waited for the reader or shared its CPU; irq: the sender CPU's interrupt time over wall
// time; cpu_ns_per_frame: the two together per frame, the figure that holds on a loaded
// machine; eagain, sends).
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef HAVE_LIBURING
#include <liburing.h>
#endif

#define MAX_CONNS 64

static int conns = 10, run_bytes = 96 << 10, sndbuf = 0, nodelay = 1, more = 0, uring = 0;
static int send_cpu = 0, read_cpu = 1, spin = 0;
static double seconds = 3;
static const char *mode = "copy";
static atomic_int stop;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static double cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

// Seconds CPU `cpu` spent in hardware and software interrupts: on loopback the receive side
// of every segment runs in the sender's softirq, which the kernel may not charge to the thread.
static double irq_seconds(int cpu) {
    char name[16], line[512];
    snprintf(name, sizeof name, "cpu%d ", cpu);
    FILE *f = fopen("/proc/stat", "r");
    double s = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long long v[8];
        if (strncmp(line, name, strlen(name)) == 0 &&
            sscanf(line + strlen(name), "%llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                   &v[2], &v[3], &v[4], &v[5], &v[6]) == 7)
            s = (double)(v[5] + v[6]) / sysconf(_SC_CLK_TCK);
    }
    if (f)
        fclose(f);
    return s;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

struct reader_arg {
    int fds[MAX_CONNS];
};

// Drains every socket until told to stop.
static void *reader(void *p) {
    struct reader_arg *a = p;
    pin(read_cpu);
    int ep = epoll_create1(0);
    for (int i = 0; i < conns; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = a->fds[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, a->fds[i], &ev);
    }
    char *buf = malloc(256 << 10);
    while (spin && !atomic_load_explicit(&stop, memory_order_relaxed))
        for (int i = 0; i < conns; i++)
            while (read(a->fds[i], buf, 256 << 10) > 0) {
            }
    struct epoll_event evs[MAX_CONNS];
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        int n = epoll_wait(ep, evs, MAX_CONNS, 100);
        for (int i = 0; i < n; i++)
            while (read(evs[i].data.fd, buf, 256 << 10) > 0) {
            }
    }
    return NULL;
}

// One QoS 0 PUBLISH: fixed header, remaining length, topic, payload; returns its length.
static int frame(uint8_t *out, int payload, int *header_len) {
    const char *topic = "rcb/12345/t/0";
    int tl = strlen(topic), rem = 2 + tl + payload, i = 0;
    out[i++] = 0x30;
    do {
        uint8_t b = rem & 0x7f;
        rem >>= 7;
        out[i++] = b | (rem ? 0x80 : 0);
    } while (rem);
    out[i++] = tl >> 8;
    out[i++] = tl & 0xff;
    memcpy(out + i, topic, tl);
    i += tl;
    *header_len = i;
    memset(out + i, 'x', payload);
    return i + payload;
}

static void connect_pairs(int *send_fds, int *recv_fds) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t len = sizeof a;
    if (bind(l, (void *)&a, sizeof a) || listen(l, 64) || getsockname(l, (void *)&a, &len))
        die("listen");
    for (int i = 0; i < conns; i++) {
        int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(c, (void *)&a, sizeof a);
        int s = accept4(l, NULL, NULL, SOCK_NONBLOCK);
        if (s < 0)
            die("accept");
        // The broker's side is the accepted socket; it sends.
        int one = 1;
        if (nodelay)
            setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (sndbuf)
            setsockopt(s, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        send_fds[i] = s;
        recv_fds[i] = c;
    }
    close(l);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PAYLOAD [options] (see the comment at the top)\n", argv[0]);
        return 2;
    }
    int payload = atoi(argv[1]);
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : "0";
        if (!strcmp(o, "--conns")) conns = atoi(v), i++;
        else if (!strcmp(o, "--run-bytes")) run_bytes = atoi(v), i++;
        else if (!strcmp(o, "--mode")) mode = v, i++;
        else if (!strcmp(o, "--sndbuf")) sndbuf = atoi(v), i++;
        else if (!strcmp(o, "--seconds")) seconds = atof(v), i++;
        else if (!strcmp(o, "--cpus")) sscanf(v, "%d,%d", &send_cpu, &read_cpu), i++;
        else if (!strcmp(o, "--no-nodelay")) nodelay = 0;
        else if (!strcmp(o, "--more")) more = 1;
        else if (!strcmp(o, "--uring")) uring = 1;
        else if (!strcmp(o, "--spin")) spin = 1;
        else {
            fprintf(stderr, "unknown option %s\n", o);
            return 2;
        }
    }
    if (conns < 1 || conns > MAX_CONNS) {
        fprintf(stderr, "--conns must be 1 to %d\n", MAX_CONNS);
        return 2;
    }
    int is_copy = !strcmp(mode, "copy"), is_iov2 = !strcmp(mode, "iov2");
    uint8_t one[70000];
    int hlen, flen = frame(one, payload, &hlen);
    int per_run = run_bytes / flen > 0 ? run_bytes / flen : 1;
    if (is_iov2 && per_run > 512)
        per_run = 512; // Linux takes at most 1024 iovecs
    // Frames laid out back to back (flat), and a source of separate frames for copy/iov2,
    // each in its own allocation as the outbox's payloads are.
    uint8_t *flat = malloc((size_t)per_run * flen);
    uint8_t **frames = malloc(per_run * sizeof *frames);
    for (int i = 0; i < per_run; i++) {
        memcpy(flat + (size_t)i * flen, one, flen);
        frames[i] = malloc(flen);
        memcpy(frames[i], one, flen);
    }
    struct iovec *iov = malloc(2 * per_run * sizeof *iov);

    int send_fds[MAX_CONNS];
    struct reader_arg ra;
    connect_pairs(send_fds, ra.fds);
    pthread_t rt;
    pthread_create(&rt, NULL, reader, &ra);
    pin(send_cpu);
#ifdef HAVE_LIBURING
    struct io_uring ring;
    if (uring && io_uring_queue_init(64, &ring, 0))
        die("io_uring_queue_init");
#else
    if (uring) {
        fprintf(stderr, "--uring needs a build with -DHAVE_LIBURING -luring\n");
        return 2;
    }
#endif
    // Each socket's position within the current run (a partial write continues from there).
    size_t off[MAX_CONNS] = {0};
    size_t run_len = (size_t)per_run * flen;
    long long bytes = 0, eagain = 0, sends = 0;
    double start = now(), end = start + seconds, cpu_start = cpu_now();
    double irq_start = irq_seconds(send_cpu);
    while (now() < end) {
        int full = 0;
        for (int c = 0; c < conns; c++) {
            size_t at = off[c];
            struct msghdr msg = {0};
            int n = 0;
            if (is_iov2) {
                // Resume inside a run: skip whole iovecs written already.
                size_t skip = at;
                for (int i = 0; i < per_run; i++) {
                    uint8_t *parts[2] = {frames[i], frames[i] + hlen};
                    size_t lens[2] = {hlen, flen - hlen};
                    for (int p = 0; p < 2; p++) {
                        if (skip >= lens[p]) {
                            skip -= lens[p];
                            continue;
                        }
                        iov[n].iov_base = parts[p] + skip;
                        iov[n++].iov_len = lens[p] - skip;
                        skip = 0;
                    }
                }
            } else {
                if (is_copy && at == 0)
                    for (int i = 0; i < per_run; i++)
                        memcpy(flat + (size_t)i * flen, frames[i], flen);
                iov[0].iov_base = flat + at;
                iov[0].iov_len = run_len - at;
                n = 1;
            }
            msg.msg_iov = iov;
            msg.msg_iovlen = n;
            int flags = MSG_DONTWAIT | MSG_NOSIGNAL | (more && c + 1 < conns ? MSG_MORE : 0);
            ssize_t w;
#ifdef HAVE_LIBURING
            if (uring) {
                struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
                io_uring_prep_sendmsg(sqe, send_fds[c], &msg, flags);
                io_uring_submit_and_wait(&ring, 1);
                struct io_uring_cqe *cqe;
                io_uring_wait_cqe(&ring, &cqe);
                w = cqe->res < 0 ? (errno = -cqe->res, -1) : cqe->res;
                io_uring_cqe_seen(&ring, cqe);
            } else
#endif
                w = sendmsg(send_fds[c], &msg, flags);
            sends++;
            if (w < 0) {
                if (errno != EAGAIN)
                    die("sendmsg");
                eagain++;
                full++;
                continue;
            }
            bytes += w;
            off[c] = (at + w) % run_len;
        }
        if (full == conns) {
            struct pollfd p[MAX_CONNS];
            for (int c = 0; c < conns; c++)
                p[c] = (struct pollfd){.fd = send_fds[c], .events = POLLOUT};
            poll(p, conns, 100);
        }
    }
    double wall = now() - start, cpu = cpu_now() - cpu_start;
    double irq = irq_seconds(send_cpu) - irq_start;
    atomic_store(&stop, 1);
    pthread_join(rt, NULL);
    double frames_sent = (double)bytes / flen;
    printf("payload=%d frame=%d mode=%s%s%s run_bytes=%zu conns=%d sndbuf=%d nodelay=%d "
           "frames_per_s=%.0f ns_per_frame=%.1f mb_per_s=%.0f sender_cpu=%.0f%% irq=%.0f%% "
           "cpu_ns_per_frame=%.1f eagain=%lld "
           "sends=%lld\n",
           payload, flen, mode, uring ? "+uring" : "", more ? "+more" : "", run_len, conns,
           sndbuf, nodelay, frames_sent / wall, wall * 1e9 / frames_sent,
           frames_sent * payload / wall / 1e6, 100 * cpu / wall, 100 * irq / wall,
           (cpu + irq) * 1e9 / frames_sent, eagain, sends);
    return 0;
}
