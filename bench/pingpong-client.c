/*
 * pingpong-client: N synchronous 32-byte request/replies over a UNIX stream socket to an echo
 * server, printing the mean round trip. Used by bench/node-floor.ts to time a bare Node.js
 * echo server (native poller + recvmsg + sendmsg, no protocol) against uds-pingpong.
 * Usage: pingpong-client SOCKET N
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s SOCKET N\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[2]);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    strncpy(a.sun_path, argv[1], sizeof(a.sun_path) - 1);
    if (connect(s, (void *)&a, sizeof(a)) != 0) {
        perror("connect");
        return 1;
    }
    char b[32] = { 0 };
    struct timespec t0, t1;
    for (int i = 0; i < n + 1000; i++) {
        if (i == 1000) {
            clock_gettime(CLOCK_MONOTONIC, &t0);
        }
        if (send(s, b, sizeof(b), 0) != (ssize_t)sizeof(b)) {
            return 2;
        }
        size_t got = 0;
        while (got < sizeof(b)) {
            ssize_t r = recv(s, b + got, sizeof(b) - got, 0);
            if (r <= 0) {
                return 2;
            }
            got += (size_t)r;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("RESULT op=pingpong n=%d mean_rtt_us=%.3f\n", n,
           ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / n);
    return 0;
}
