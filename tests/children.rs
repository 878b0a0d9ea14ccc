//! Child watchers, by pidfd on Linux (SIGCHLD elsewhere), every backend.

mod util;

#[path = "children/cases.rs"]
#[macro_use]
mod cases;

each_child_case!(per_backend);
