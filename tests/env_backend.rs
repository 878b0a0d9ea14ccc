//! `MUXLOOP_BACKEND` picks the default selector's backend. One test per
//! process, since it changes the environment.

use std::io;

use muxloop::{BackendKind, Selector};

#[test]
fn env_var_overrides_default_and_rejects_unknown_names() {
    // SAFETY (edition 2024 marks set_var unsafe): this binary runs this one
    // test, so no other thread reads the environment concurrently.
    unsafe { std::env::set_var("MUXLOOP_BACKEND", "poll") };
    let sel = Selector::<()>::new().unwrap();
    assert_eq!(sel.backend_name(), "poll");

    unsafe { std::env::set_var("MUXLOOP_BACKEND", "select") };
    assert_eq!(Selector::<()>::new().unwrap().backend_name(), "select");

    unsafe { std::env::set_var("MUXLOOP_BACKEND", "no-such-backend") };
    let err = Selector::<()>::new().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let msg = err.to_string();
    assert!(msg.contains("MUXLOOP_BACKEND=no-such-backend"), "{msg}");
    assert!(msg.contains("available"), "{msg}");

    for kind in BackendKind::all() {
        if !kind.is_available() {
            unsafe { std::env::set_var("MUXLOOP_BACKEND", kind.name()) };
            let err = Selector::<()>::new().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
        }
    }

    unsafe { std::env::remove_var("MUXLOOP_BACKEND") };
    assert_eq!(
        Selector::<()>::new().unwrap().backend_name(),
        BackendKind::platform_default().name()
    );
}
