/*
 * dmamap-client: times VFIO_USER_DMA_MAP and VFIO_USER_DMA_UNMAP round trips against any
 * vfio-user server, as QEMU's client sends them under a vIOMMU (hw/vfio-user/container.c:
 * one synchronous DMA_MAP per 4 KiB page of an I/O, then one DMA_UNMAP per page). Neutral C,
 * so our server and libvfio-user's are timed by the same client (bench/dmamap.ts).
 *
 * After the VERSION handshake it runs N iterations (after a warm-up of N/10, at least 100):
 *  - single: DMA_MAP of one 4 KiB page (READ|WRITE) at a varying IOVA, then its DMA_UNMAP;
 *  - burst:  32 DMA_MAPs of consecutive pages, then their 32 DMA_UNMAPs (a 128 KiB I/O);
 * with -f (the default) each DMA_MAP carries the same memfd (sealed like QEMU's
 * memory-backend-memfd: grow, shrink, seal) by SCM_RIGHTS at a varying page offset, which
 * the kernel dups into a fresh fd number of the server each time; with -F no fd (QEMU with
 * guest RAM that is not shared). Every reply is checked: id, command, reply flag, no error,
 * its size. Prints one RESULT line: per-message mean and median round trip of the maps and
 * the unmaps, and of both.
 *
 * Usage: dmamap-client [-n N] [-b] [-F] SOCKET
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CMD_VERSION 1
#define CMD_DMA_MAP 2
#define CMD_DMA_UNMAP 3
#define FLAG_REPLY 1
#define FLAG_ERROR 0x20
#define PAGE 4096
#define BURST 32
#define RAM_PAGES 16384 /* a 64 MiB "guest RAM" memfd */
#define IOVA_BASE 0xfff00000ull /* where Linux's IOMMU driver hands out IOVAs: below 4 GiB, downwards */

struct hdr {
    uint16_t id, cmd;
    uint32_t size, flags, error;
};

static int sock;
static uint16_t next_id;

static void die(const char *what)
{
    fprintf(stderr, "dmamap-client: %s (%s)\n", what, errno ? strerror(errno) : "protocol");
    exit(1);
}

static void send_msg(uint16_t cmd, const void *payload, size_t len, int fd)
{
    unsigned char buf[256];
    struct hdr h = { .id = ++next_id, .cmd = cmd, .size = (uint32_t)(sizeof h + len) };
    memcpy(buf, &h, sizeof h);
    memcpy(buf + sizeof h, payload, len);
    struct iovec iov = { buf, sizeof h + len };
    union {
        char b[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } c;
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (fd >= 0) {
        m.msg_control = c.b;
        m.msg_controllen = sizeof c.b;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    if (sendmsg(sock, &m, MSG_NOSIGNAL) != (ssize_t)(sizeof h + len)) die("sendmsg");
}

static void recv_all(void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(sock, (char *)p + got, n - got, 0);
        if (r <= 0) die(r == 0 ? "server closed the connection" : "recv");
        got += (size_t)r;
    }
}

/* Reads the reply to the last message and checks it; its payload (at most cap bytes) into out. */
static size_t recv_reply(uint16_t cmd, void *out, size_t cap, size_t want)
{
    struct hdr h;
    recv_all(&h, sizeof h);
    if (h.size < sizeof h || h.size - sizeof h > cap) {
        fprintf(stderr, "dmamap-client: reply of %u bytes to command %u\n", h.size, cmd);
        exit(1);
    }
    recv_all(out, h.size - sizeof h);
    if (h.id != next_id || h.cmd != cmd || (h.flags & 0xf) != FLAG_REPLY || (h.flags & FLAG_ERROR) || h.error) {
        fprintf(stderr, "dmamap-client: bad reply to command %u id %u: id %u cmd %u flags 0x%x error %u\n", cmd, next_id, h.id, h.cmd, h.flags, h.error);
        exit(1);
    }
    if (want != (size_t)-1 && h.size - sizeof h != want) {
        fprintf(stderr, "dmamap-client: reply to command %u has %zu payload bytes, %zu expected\n", cmd, h.size - sizeof h, want);
        exit(1);
    }
    return h.size - sizeof h;
}

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int memfd = -1;

static double dma_map(uint64_t iova, uint64_t offset)
{
    struct {
        uint32_t argsz, flags;
        uint64_t offset, address, size;
    } req = { 32, 3 /* READ|WRITE */, memfd >= 0 ? offset : 0, iova, PAGE };
    unsigned char rep[64];
    double t0 = now_us();
    send_msg(CMD_DMA_MAP, &req, sizeof req, memfd);
    recv_reply(CMD_DMA_MAP, rep, sizeof rep, 0);
    return now_us() - t0;
}

static double dma_unmap(uint64_t iova)
{
    struct {
        uint32_t argsz, flags;
        uint64_t address, size;
    } req = { 24, 0, iova, PAGE }, rep;
    double t0 = now_us();
    send_msg(CMD_DMA_UNMAP, &req, sizeof req, -1);
    recv_reply(CMD_DMA_UNMAP, &rep, sizeof rep, sizeof rep);
    double t = now_us() - t0;
    if (rep.address != iova || rep.size != PAGE) die("DMA_UNMAP reply does not echo the request");
    return t;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void stats(double *v, size_t n, double *mean, double *p50)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += v[i];
    *mean = s / n;
    qsort(v, n, sizeof *v, cmp);
    *p50 = v[n / 2];
}

int main(int argc, char **argv)
{
    long n = 10000;
    int burst = 0, with_fd = 1, opt;
    while ((opt = getopt(argc, argv, "n:bfF")) != -1) {
        if (opt == 'n') n = atol(optarg);
        else if (opt == 'b') burst = 1;
        else if (opt == 'f') with_fd = 1;
        else if (opt == 'F') with_fd = 0;
        else {
            fprintf(stderr, "usage: %s [-n N] [-b] [-F] SOCKET\n", argv[0]);
            return 2;
        }
    }
    if (optind >= argc || n < 1) {
        fprintf(stderr, "usage: %s [-n N] [-b] [-F] SOCKET\n", argv[0]);
        return 2;
    }
    if (with_fd) {
        memfd = memfd_create("guest-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (memfd < 0 || ftruncate(memfd, (off_t)RAM_PAGES * PAGE) != 0) die("memfd");
        if (fcntl(memfd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0) die("F_ADD_SEALS");
    }
    sock = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, argv[optind], sizeof a.sun_path - 1);
    if (connect(sock, (void *)&a, sizeof a) != 0) die("connect");

    static const char caps[] = "{\"capabilities\":{\"max_msg_fds\":8,\"max_data_xfer_size\":1048576}}";
    unsigned char v[4 + sizeof caps], rep[4096];
    v[0] = v[1] = v[2] = v[3] = 0; /* major 0, minor 0 */
    memcpy(v + 4, caps, sizeof caps);
    send_msg(CMD_VERSION, v, sizeof v, -1);
    if (recv_reply(CMD_VERSION, rep, sizeof rep, (size_t)-1) < 4) die("short VERSION reply");

    long warm = n / 10 < 100 ? 100 : n / 10;
    size_t per = burst ? BURST : 1, total = (size_t)n * per;
    double *maps = malloc(total * sizeof *maps), *unmaps = malloc(total * sizeof *unmaps);
    if (!maps || !unmaps) die("malloc");
    uint64_t page = 0; /* rotates through the IOVA window and the memfd */
    for (long i = -warm; i < n; i++) {
        uint64_t first = page;
        for (size_t k = 0; k < per; k++) {
            uint64_t p = (first + k) % RAM_PAGES;
            double t = dma_map(IOVA_BASE - (p + 1) * PAGE, ((p * 7919) % RAM_PAGES) * PAGE);
            if (i >= 0) maps[(size_t)i * per + k] = t;
        }
        for (size_t k = 0; k < per; k++) {
            uint64_t p = (first + k) % RAM_PAGES;
            double t = dma_unmap(IOVA_BASE - (p + 1) * PAGE);
            if (i >= 0) unmaps[(size_t)i * per + k] = t;
        }
        page = (first + per) % RAM_PAGES;
    }
    double mm, mp, um, up, am, ap;
    double *both = malloc(2 * total * sizeof *both);
    if (!both) die("malloc");
    memcpy(both, maps, total * sizeof *maps);
    memcpy(both + total, unmaps, total * sizeof *unmaps);
    stats(maps, total, &mm, &mp);
    stats(unmaps, total, &um, &up);
    stats(both, 2 * total, &am, &ap);
    printf("RESULT messages=%zu map_mean_us=%.2f map_p50_us=%.2f unmap_mean_us=%.2f unmap_p50_us=%.2f mean_us=%.2f p50_us=%.2f\n", 2 * total, mm, mp, um, up, am, ap);
    return 0;
}
