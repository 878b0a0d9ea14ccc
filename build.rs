// Names the kernel-interface families once, so that source files say
// `cfg(muxloop_epoll)` / `cfg(muxloop_kqueue)` instead of repeating lists of
// operating systems.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(muxloop_epoll)");
    println!("cargo::rustc-check-cfg=cfg(muxloop_kqueue)");
    println!("cargo::rustc-check-cfg=cfg(muxloop_uring)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    match os.as_str() {
        "linux" | "android" => {
            println!("cargo::rustc-cfg=muxloop_epoll");
            // io_uring through the `io-uring` crate, which is Linux-only.
            if os == "linux" && std::env::var_os("CARGO_FEATURE_URING").is_some() {
                println!("cargo::rustc-cfg=muxloop_uring");
            }
        }
        "macos" | "ios" | "tvos" | "watchos" | "freebsd" | "openbsd" | "netbsd" | "dragonfly" => {
            println!("cargo::rustc-cfg=muxloop_kqueue")
        }
        _ => {}
    }
}
