// Names the kernel-interface families once, so that source files say
// `cfg(muxloop_epoll)` / `cfg(muxloop_kqueue)` / `cfg(muxloop_sock_flags)` /
// `cfg(muxloop_apple)` instead of repeating lists of operating systems.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(muxloop_epoll)");
    println!("cargo::rustc-check-cfg=cfg(muxloop_kqueue)");
    println!("cargo::rustc-check-cfg=cfg(muxloop_uring)");
    println!("cargo::rustc-check-cfg=cfg(muxloop_sock_flags)");
    println!("cargo::rustc-check-cfg=cfg(muxloop_apple)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    // socket(2) and accept4(2) take SOCK_NONBLOCK | SOCK_CLOEXEC (one call
    // instead of a call and one or two fcntl/ioctl).
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        println!("cargo::rustc-cfg=muxloop_sock_flags");
    }
    // Apple's systems: no MSG_NOSIGNAL (SO_NOSIGPIPE instead).
    if matches!(os.as_str(), "macos" | "ios" | "tvos" | "watchos") {
        println!("cargo::rustc-cfg=muxloop_apple");
    }
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
