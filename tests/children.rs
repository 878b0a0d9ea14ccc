//! Child watchers, by pidfd on Linux (SIGCHLD elsewhere), every backend.

mod util;

#[path = "children/cases.rs"]
mod cases;

per_backend!(
    exit_status_reaches_the_callback,
    a_child_that_exited_before_it_was_added_is_reported,
    a_killed_child_reports_its_signal,
    many_children_at_once_and_no_zombies,
    a_bare_pid_is_watched_too,
    child_output_streams_through_the_loop,
);
