// What a send() of 200 bytes on a Unix stream socket costs the sender when the
// reader sleeps in epoll_wait on the other CPU (the send must wake it) and when
// the reader polls (no wake-up). Both ends are in epoll sets, as the daemon's
// and the load generator's are. Needs 2 CPUs. Build and run:
//   gcc -O2 -Wall -pthread -o /tmp/wakeup-cost scripts/wakeup-cost.c && /tmp/wakeup-cost 20000
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int sv[2];
static int polling;       // the reader polls instead of sleeping in epoll_wait
static volatile int stop;

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static int by_value(const void *x, const void *y) {
    double d = *(const double *)x - *(const double *)y;
    return d < 0 ? -1 : d > 0;
}

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

// An epoll set holding `fd` for reading.
static int watch(int fd, unsigned events) {
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = events, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    return ep;
}

static void *reader(void *arg) {
    (void)arg;
    pin(0);
    char buf[4096];
    int ep = watch(sv[1], EPOLLIN | EPOLLET);
    while (!stop) {
        if (!polling) {
            struct epoll_event e;
            epoll_wait(ep, &e, 1, 100);
        }
        while (recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) > 0) {
        }
    }
    close(ep);
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    char msg[200];
    memset(msg, 'x', sizeof msg);
    double *took = malloc(n * sizeof *took);
    for (polling = 0; polling < 2; polling++) {
        socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
        int ep = watch(sv[0], EPOLLIN);  // only to be in an epoll set
        stop = 0;
        pthread_t t;
        pthread_create(&t, NULL, reader, NULL);
        pin(1);
        usleep(10000);
        double total = 0;
        for (int i = 0; i < n; i++) {
            // 50 µs for the reader to go idle (asleep, or back to polling).
            double idle = now_ns();
            while (now_ns() - idle < 50000) {
            }
            double a = now_ns();
            send(sv[0], msg, sizeof msg, 0);
            took[i] = now_ns() - a;
            total += took[i];
        }
        stop = 1;
        send(sv[0], msg, 1, 0);
        pthread_join(t, NULL);
        close(ep);
        close(sv[0]);
        close(sv[1]);
        qsort(took, n, sizeof *took, by_value);
        printf("%s: send mean %.2f us, median %.2f us, p90 %.2f us\n",
               polling ? "reader polling (no wake-up)" : "reader asleep in epoll_wait",
               total / n / 1000, took[n / 2] / 1000, took[n * 9 / 10] / 1000);
    }
    free(took);
    return 0;
}
