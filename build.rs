// Names the two kernel-interface families once, so that source files say
// `cfg(muxloop_epoll)` / `cfg(muxloop_kqueue)` instead of repeating lists of
// operating systems.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(muxloop_epoll)");
    println!("cargo::rustc-check-cfg=cfg(muxloop_kqueue)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    match os.as_str() {
        "linux" | "android" => println!("cargo::rustc-cfg=muxloop_epoll"),
        "macos" | "ios" | "tvos" | "watchos" | "freebsd" | "openbsd" | "netbsd" | "dragonfly" => {
            println!("cargo::rustc-cfg=muxloop_kqueue")
        }
        _ => {}
    }
}
