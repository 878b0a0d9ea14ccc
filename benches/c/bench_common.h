/* Shared by the C reference benches: argument parsing, socket pairs, fd
 * limit, timing and the RESULT line, so that only the event-library calls
 * differ between bench_libev.c and bench_libevent.c. Same method and
 * command line as examples/bench.rs. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int num_pipes = 100, num_active = 1, num_writes = -1, iterations = 25, use_timers = 0;
static const char *backend_name = NULL; /* -b: a library that can choose uses it */
static int *pipes; /* 2 per pair: [read end, write end] */
static int count, fired, writes;

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void parse_args(int argc, char **argv) {
    int c;
    while ((c = getopt(argc, argv, "b:n:a:w:i:t")) != -1) {
        switch (c) {
        case 'b': backend_name = optarg; break;
        case 'n': num_pipes = atoi(optarg); break;
        case 'a': num_active = atoi(optarg); break;
        case 'w': num_writes = atoi(optarg); break;
        case 'i': iterations = atoi(optarg); break;
        case 't': use_timers = 1; break;
        default:
            fprintf(stderr, "usage: %s [-n pairs] [-a active] [-w writes] [-i iterations] [-t]\n", argv[0]);
            exit(2);
        }
    }
    if (num_writes < 0) num_writes = num_pipes;
    if (num_pipes < 1 || num_active < 1 || num_active > num_pipes || iterations < 2) {
        fprintf(stderr, "need pairs >= active >= 1 and iterations >= 2\n");
        exit(2);
    }
}

static void make_pairs(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if ((rlim_t)(2 * num_pipes + 16) > rl.rlim_cur) {
            fprintf(stderr, "this size needs about %d fds, but RLIMIT_NOFILE allows %lu\n",
                    2 * num_pipes + 16, (unsigned long)rl.rlim_cur);
            exit(2);
        }
    }
    pipes = calloc(2 * num_pipes, sizeof(int));
    for (int i = 0; i < num_pipes; i++) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, &pipes[2 * i]) == -1) {
            perror("socketpair");
            exit(1);
        }
        fcntl(pipes[2 * i], F_SETFL, O_NONBLOCK);
        fcntl(pipes[2 * i + 1], F_SETFL, O_NONBLOCK);
    }
}

/* The read callback's work, identical in every library. */
static void on_read(int idx) {
    char ch;
    if (read(pipes[2 * idx], &ch, 1) == 1) count++;
    if (writes) {
        int widx = idx + 1;
        if (widx >= num_pipes) widx -= num_pipes;
        if (write(pipes[2 * widx + 1], "e", 1) < 0) { /* full: fine */ }
        writes--;
        fired++;
    }
}

static void fire(void) {
    int space = num_pipes / num_active;
    fired = 0;
    for (int i = 0; i < num_active; i++, fired++)
        if (write(pipes[2 * (i * space) + 1], "e", 1) < 0) { perror("write"); exit(1); }
    count = 0;
    writes = num_writes;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void print_result(const char *lib, const char *backend, double *setup, double *run, double *total, int n) {
    double run_min = run[0];
    for (int i = 1; i < n; i++) if (run[i] < run_min) run_min = run[i];
    double s = median(setup, n), r = median(run, n), t = median(total, n);
    printf("RESULT lib=%s backend=%s n=%d a=%d w=%d t=%d setup_us=%.1f run_us=%.1f total_us=%.1f "
           "run_min_us=%.1f ns_per_cb=%.1f setup_ns_per_fd=%.1f iters=%d\n",
           lib, backend, num_pipes, num_active, num_writes, use_timers, s, r, t, run_min,
           r * 1000.0 / (num_active + num_writes), s * 1000.0 / num_pipes, n);
}

/* The iteration loop, the same for every library: `rearm` re-registers
 * every watcher (the timed setup), `run_nowait` runs the loop once without
 * blocking. */
static void run_iterations(const char *lib, const char *backend, void (*rearm)(void), void (*run_nowait)(void)) {
    double *setup = calloc(iterations, sizeof(double)), *run = calloc(iterations, sizeof(double)),
           *total = calloc(iterations, sizeof(double));
    int n = 0;
    for (int it = 0; it < iterations; it++) {
        double ta = now_us();
        rearm();
        run_nowait();
        fire();
        double ts = now_us();
        while (count != fired) run_nowait();
        double te = now_us();
        if (it > 0) { /* the first iteration is a warm-up */
            setup[n] = ts - ta;
            run[n] = te - ts;
            total[n] = te - ta;
            n++;
        }
    }
    print_result(lib, backend, setup, run, total, n);
}

#endif
