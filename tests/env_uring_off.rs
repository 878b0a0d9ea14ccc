//! `MUXLOOP_BACKEND=uring` where this process cannot make a ring (here:
//! switched off with `MUXLOOP_URING=0`) names the cause, as
//! `with_backend(Uring)` does, not "not available on this platform". Its
//! own binary: it changes the environment before anything probes.

use muxloop::{BackendKind, Selector};

#[test]
fn uring_from_the_environment_names_the_cause_as_with_backend_does() {
    if !cfg!(target_os = "linux") || !cfg!(feature = "uring") {
        eprintln!("skipped: no uring backend in this build");
        return;
    }
    // SAFETY (edition 2024 marks set_var unsafe): this binary runs this one
    // test, so no other thread reads the environment concurrently.
    unsafe {
        std::env::set_var("MUXLOOP_URING", "0");
        std::env::set_var("MUXLOOP_BACKEND", "uring");
    }
    assert!(!BackendKind::Uring.is_available());
    let direct = Selector::<()>::with_backend(BackendKind::Uring).unwrap_err();
    let from_env = Selector::<()>::new().unwrap_err();
    assert_eq!(from_env.kind(), direct.kind(), "{from_env} / {direct}");
    assert_eq!(
        from_env.to_string(),
        format!("MUXLOOP_BACKEND=uring: {direct}")
    );
    assert!(direct.to_string().contains("switched off"), "{direct}");
}
