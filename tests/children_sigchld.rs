//! Child watchers through SIGCHLD and waitpid (what systems without
//! pidfds use), forced with `MUXLOOP_CHILD_WATCH=sigchld`, every backend.
//! SIGCHLD belongs to one loop at a time, so the cases take turns.

mod util;

#[path = "children/cases.rs"]
#[macro_use]
mod children_cases;

/// The cases with the SIGCHLD mechanism chosen first.
mod cases {
    use muxloop::BackendKind;

    fn sigchld() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: every test of this binary calls this first, and the
        // `Once` makes the others wait, so nothing reads the environment
        // while it is written.
        ONCE.call_once(|| unsafe { std::env::set_var("MUXLOOP_CHILD_WATCH", "sigchld") });
    }

    /// SIGCHLD belongs to one loop at a time: the cases take turns.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    macro_rules! forced {
        ($($case:ident),*) => {$(
            pub fn $case(kind: BackendKind) {
                sigchld();
                let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
                super::children_cases::$case(kind)
            }
        )*};
    }

    each_child_case!(forced);
}

each_child_case!(per_backend);
