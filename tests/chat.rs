//! `examples/chat.rs` and `examples/chat_client.rs` end to end, over
//! loopback: exact relay to everyone else, a slow consumer cut off while
//! the others keep chatting (server memory bounded), fds given back.
//! The room's logic over time — a slow reader kept, one that never reads
//! cut off, the idle timeout — is tested in simulation, over many seeds
//! and in virtual time (`sim_chat`, tests/sim.rs).

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use muxloop::BackendKind;
use util::*;

fn chat(kind: BackendKind, extra: &[&str]) -> ServerProcess {
    let mut cmd = Command::new(example_path("chat"));
    cmd.args(["--addr", "127.0.0.1:0", "--backend", kind.name()])
        .args(extra);
    start_server(cmd)
}

fn join(server: &ServerProcess) -> BufReader<TcpStream> {
    let c = TcpStream::connect(server.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.set_nodelay(true).unwrap();
    BufReader::new(c)
}

fn say(c: &mut BufReader<TcpStream>, line: &str) {
    c.get_mut().write_all(line.as_bytes()).unwrap();
}

fn hear(c: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    c.read_line(&mut line).unwrap();
    line
}

/// Waits until the server has registered `n` members (each sees the
/// others' lines only once it is in the room).
fn settle(members: &mut [BufReader<TcpStream>]) {
    // A ping from the first, heard by every other, proves they are all in.
    loop {
        say(&mut members[0], "ping\n");
        let heard = members[1..].iter_mut().all(|m| {
            m.get_ref()
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut line = String::new();
            let ok = m.read_line(&mut line).is_ok() && line == "ping\n";
            m.get_ref()
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            ok
        });
        if heard {
            // Drain the extra pings of earlier rounds.
            std::thread::sleep(Duration::from_millis(100));
            for m in members.iter_mut() {
                m.get_ref().set_nonblocking(true).unwrap();
                let mut sink = Vec::new();
                let _ = m.read_to_end(&mut sink);
                m.get_ref().set_nonblocking(false).unwrap();
            }
            return;
        }
    }
}

#[test]
fn lines_are_relayed_exactly_to_everyone_else_on_every_backend() {
    for &kind in BackendKind::available() {
        let server = chat(kind, &[]);
        assert!(
            server
                .first_line
                .contains(&format!("(backend {})", kind.name()))
        );
        let mut members: Vec<_> = (0..3).map(|_| join(&server)).collect();
        settle(&mut members);
        // Split across writes, several per write, binary-safe.
        say(&mut members[0], "hel");
        say(&mut members[0], "lo\nsecond line\r\n\u{e9}t\u{e9}\n");
        say(&mut members[1], "from b\n");
        let from_a = ["hello\n", "second line\r\n", "\u{e9}t\u{e9}\n"];
        let lines: Vec<String> = (0..3).map(|_| hear(&mut members[1])).collect();
        assert_eq!(lines, from_a, "{kind}");
        // The third hears both senders' lines, each sender's in order;
        // which connection the server reads first is not promised.
        let mut lines: Vec<String> = (0..4).map(|_| hear(&mut members[2])).collect();
        let b = lines.iter().position(|l| l == "from b\n");
        assert!(b.is_some(), "{kind}: {lines:?}");
        lines.remove(b.unwrap());
        assert_eq!(lines, from_a, "{kind}");
        assert_eq!(hear(&mut members[0]), "from b\n", "{kind}");
        // Never echoed back: the sender's next line is someone else's.
        say(&mut members[2], "from c\n");
        assert_eq!(hear(&mut members[0]), "from c\n", "{kind}");
        assert_eq!(hear(&mut members[1]), "from c\n", "{kind}");
        say(&mut members[1], "last\n");
        assert_eq!(hear(&mut members[2]), "last\n");
        // A partial line is not relayed until it is complete.
        say(&mut members[0], "no newline yet");
        members[2]
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut line = String::new();
        assert!(members[2].read_line(&mut line).is_err() || line.is_empty());
    }
}

#[test]
fn a_client_that_does_not_read_is_cut_off_and_the_others_keep_chatting() {
    let server = chat(BackendKind::platform_default(), &[]);
    let pid = server.child.id();
    let mut members: Vec<_> = (0..3).map(|_| join(&server)).collect();
    settle(&mut members);
    let rss_before = proc_rss_kib(pid);
    let mut slow = members.pop().unwrap();
    let mut listener = members.pop().unwrap();
    let mut talker = members.pop().unwrap();
    // The listener reads everything in a thread; the slow one never reads.
    let line = format!("{}\n", "x".repeat(999));
    const LINES: usize = 8_000; // 8 MB, far past the 1 MiB backlog limit
    let reader = std::thread::spawn(move || {
        let mut n = 0;
        let mut buf = String::new();
        while n < LINES {
            buf.clear();
            listener.read_line(&mut buf).unwrap();
            assert_eq!(buf.len(), 1000);
            n += 1;
        }
        listener
    });
    for _ in 0..LINES {
        say(&mut talker, &line);
    }
    let mut listener = reader.join().unwrap();
    // Everyone else still chats.
    say(&mut talker, "still here\n");
    assert_eq!(hear(&mut listener), "still here\n");
    let grew = proc_rss_kib(pid).saturating_sub(rss_before);
    assert!(grew < 16 * 1024, "server grew by {grew} KiB");
    // The slow one was disconnected: reading what it got ends in EOF or a
    // reset, well short of everything.
    slow.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0; 1 << 16];
    loop {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < LINES * 1000, "the slow client got everything ({got})");
}

#[test]
fn chat_client_sends_stdin_lines_and_prints_the_room() {
    let server = chat(BackendKind::platform_default(), &[]);
    let mut peer = join(&server);
    let mut client = Command::new(example_path("chat_client"))
        .args(["--addr", &server.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut out = BufReader::new(client.stdout.take().unwrap());
    // Until the client is in the room, its lines may reach nobody.
    let t = Instant::now();
    loop {
        stdin.write_all(b"hello from stdin\n").unwrap();
        peer.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut line = String::new();
        if peer.read_line(&mut line).is_ok() {
            assert_eq!(line, "hello from stdin\n");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "client never joined");
    }
    peer.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    say(&mut peer, "hello back\n");
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "hello back\n");
    drop(stdin); // end of input: the client closes and exits
    let t = Instant::now();
    loop {
        if let Some(status) = client.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "client did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `want` bytes (or until EOF or an error); returns what it got.
fn read_bytes(c: &mut BufReader<TcpStream>, want: usize) -> Vec<u8> {
    let mut got = Vec::with_capacity(want);
    let mut buf = vec![0; 1 << 16];
    while got.len() < want {
        match c.read(&mut buf[..(want - got.len()).min(1 << 16)]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}

/// 64 KiB of empty lines into a room of readers: every reader gets every
/// line, and a line sent right after by someone else arrives too (the
/// flood is relayed as whole reads, not a write per line per member).
#[test]
fn a_flood_of_empty_lines_reaches_every_reader_and_the_room_goes_on() {
    let server = chat(BackendKind::platform_default(), &[]);
    let mut members: Vec<_> = (0..12).map(|_| join(&server)).collect();
    settle(&mut members);
    let mut flooder = members.remove(0);
    let mut other = members.remove(0);
    const FLOOD: usize = 64 * 1024;
    let readers: Vec<_> = members
        .into_iter()
        .map(|mut m| {
            std::thread::spawn(move || {
                let flood = read_bytes(&mut m, FLOOD);
                let last = hear(&mut m);
                (flood, last)
            })
        })
        .collect();
    flooder.get_mut().write_all(&[b'\n'; FLOOD]).unwrap();
    // The flood is relayed to `other` too; reading it shows it is through.
    let flood = read_bytes(&mut other, FLOOD);
    assert_eq!(flood.len(), FLOOD);
    say(&mut other, "after the flood\n");
    for r in readers {
        let (flood, last) = r.join().unwrap();
        assert!(flood.len() == FLOOD && flood.iter().all(|&b| b == b'\n'));
        assert_eq!(last, "after the flood\n");
    }
    assert_eq!(hear(&mut flooder), "after the flood\n");
}

/// A line longer than the 1 MiB limit cuts its sender off, also when it
/// ends in the same read that passes the limit; nobody hears it.
#[test]
fn a_line_just_over_the_limit_cuts_its_sender_off() {
    let server = chat(BackendKind::platform_default(), &[]);
    let mut members: Vec<_> = (0..3).map(|_| join(&server)).collect();
    settle(&mut members);
    let mut sender = members.remove(0);
    let mut listener = members.remove(0);
    let mut long = vec![b'z'; 1024 * 1024 + 30 * 1024];
    long.push(b'\n');
    let _ = sender.get_mut().write_all(&long);
    // The sender is disconnected.
    sender
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = sender.read_to_end(&mut rest);
    // The others heard nothing of it, and still chat.
    let mut third = members.remove(0);
    say(&mut third, "short\n");
    assert_eq!(hear(&mut listener), "short\n");
}

/// `--idle-timeout 0` is no idle timeout.
#[test]
fn an_idle_timeout_of_zero_never_closes() {
    let server = chat(BackendKind::platform_default(), &["--idle-timeout", "0"]);
    let mut members: Vec<_> = (0..2).map(|_| join(&server)).collect();
    settle(&mut members);
    std::thread::sleep(Duration::from_millis(1500));
    say(&mut members[0], "still here\n");
    assert_eq!(hear(&mut members[1]), "still here\n");
}

/// Members that never read and hold a backlog are cut off, whether the
/// idle timeout closes them first or not: the server's fds come back.
#[test]
fn members_that_never_read_give_their_fds_back() {
    let server = chat(
        BackendKind::platform_default(),
        &["--idle-timeout", "1", "--stall-timeout", "1"],
    );
    let pid = server.child.id();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    let mut talker = join(&server);
    let deaf: Vec<_> = (0..8).map(|_| join(&server)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let line = format!("{}\n", "d".repeat(4095));
    talker.get_ref().set_nonblocking(true).unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) && fds() > before + 1 {
        // Keep talking (and not idle), as far as the room lets it.
        let _ = talker.get_mut().write(line.as_bytes());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(fds() <= before + 1, "the deaf members still hold fds");
    drop(deaf);
}
