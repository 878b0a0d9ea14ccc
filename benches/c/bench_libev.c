/* bench.c's method on libev's native API, for comparison with
 * examples/bench.rs. Built and run by benches/run.sh. */
#include <ev.h>
#include "bench_common.h"

static struct ev_loop *loop;
static ev_io *watchers;
static ev_timer *timers;

static void idle_cb(EV_P_ ev_timer *w, int revents) { (void)w; (void)revents; }

static void read_cb(EV_P_ ev_io *w, int revents) {
    (void)revents;
    int idx = (int)(w - watchers);
    on_read(idx);
    if (use_timers) ev_timer_again(EV_A_ &timers[idx]);
}

static void rearm(void) {
    for (int i = 0; i < num_pipes; i++) {
        ev_io_stop(loop, &watchers[i]);
        ev_io_set(&watchers[i], pipes[2 * i], EV_READ);
        ev_io_start(loop, &watchers[i]);
        if (use_timers) {
            timers[i].repeat = 10. + (double)((i * 7919) % 1000) / 1e6;
            ev_timer_again(loop, &timers[i]);
        }
    }
}

static void run_nowait(void) { ev_run(loop, EVRUN_NOWAIT); }

int main(int argc, char **argv) {
    parse_args(argc, argv);
    make_pairs();
    /* -b poll: libev's poll backend, to compare with muxloop's; epoll otherwise. */
    int use_poll = backend_name && strcmp(backend_name, "poll") == 0;
    loop = ev_default_loop(use_poll ? EVBACKEND_POLL : EVBACKEND_EPOLL);
    watchers = calloc(num_pipes, sizeof(ev_io));
    timers = calloc(num_pipes, sizeof(ev_timer));
    for (int i = 0; i < num_pipes; i++) {
        ev_io_init(&watchers[i], read_cb, pipes[2 * i], EV_READ);
        ev_init(&timers[i], idle_cb);
    }
    run_iterations("libev", use_poll ? "poll" : "epoll", rearm, run_nowait);
    return 0;
}
