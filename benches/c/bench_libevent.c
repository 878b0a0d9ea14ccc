/* bench.c's method on libevent 2, for comparison with examples/bench.rs.
 * Built and run by benches/run.sh. */
#include <event2/event.h>
#include "bench_common.h"

static struct event_base *base;
static struct event **events;

static void read_cb(evutil_socket_t fd, short which, void *arg) {
    (void)fd; (void)which;
    on_read((int)(intptr_t)arg);
}

static void rearm(void) {
    for (int i = 0; i < num_pipes; i++) {
        struct timeval tv = {10, (i * 7919) % 1000};
        event_del(events[i]);
        event_assign(events[i], base, pipes[2 * i], EV_READ | EV_PERSIST, read_cb, (void *)(intptr_t)i);
        event_add(events[i], use_timers ? &tv : NULL);
    }
}

static void run_nowait(void) { event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK); }

int main(int argc, char **argv) {
    parse_args(argc, argv);
    make_pairs();
    struct event_config *cfg = event_config_new();
    event_config_avoid_method(cfg, "select");
    event_config_avoid_method(cfg, "poll");
    base = event_base_new_with_config(cfg);
    events = calloc(num_pipes, sizeof(struct event *));
    for (int i = 0; i < num_pipes; i++)
        events[i] = event_new(base, pipes[2 * i], EV_READ | EV_PERSIST, read_cb, (void *)(intptr_t)i);
    run_iterations("libevent", event_base_get_method(base), rearm, run_nowait);
    return 0;
}
