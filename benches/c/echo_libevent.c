/* Reference echo server on libevent 2 (bufferevents, epoll), for
 * benches/run.sh. usage: echo_libevent PORT [MAX_SECONDS] */
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include "echo_common.h"

static void read_cb(struct bufferevent *bev, void *arg) {
    (void)arg;
    evbuffer_add_buffer(bufferevent_get_output(bev), bufferevent_get_input(bev));
}

static void event_cb(struct bufferevent *bev, short what, void *arg) {
    (void)arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) bufferevent_free(bev);
}

static void accept_cb(evutil_socket_t lfd, short what, void *arg) {
    (void)what;
    struct event_base *base = arg;
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) return;
        set_nonblock(fd);
        set_nodelay(fd);
        struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
        bufferevent_setcb(bev, read_cb, NULL, event_cb, NULL);
        bufferevent_enable(bev, EV_READ | EV_WRITE);
    }
}

int main(int argc, char **argv) {
    struct event_config *cfg = event_config_new();
    event_config_avoid_method(cfg, "select");
    event_config_avoid_method(cfg, "poll");
    struct event_base *base = event_base_new_with_config(cfg);
    int lfd = listen_on(argc > 1 ? atoi(argv[1]) : 1234, "libevent-epoll");
    struct event *lev = event_new(base, lfd, EV_READ | EV_PERSIST, accept_cb, base);
    event_add(lev, NULL);
    if (argc > 2 && atoi(argv[2]) > 0) {
        struct timeval tv = {atoi(argv[2]), 0};
        event_base_loopexit(base, &tv);
    }
    event_base_dispatch(base);
    return 0;
}
