//! `cairn demo` as a user runs it: the real binary starts its nodes, keeps
//! serving when one is killed (from its prompt or from outside), and restarts it
//! on command; the restarted node serves what was written while it was down.

// Tests keep their own deadlines on the OS clock; the clock rule (clippy.toml) is for node code.
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

/// The demo process; dropped, it is asked to stop (SIGTERM stops its nodes too).
struct Demo {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Demo {
    fn start(dir: &std::path::Path) -> Demo {
        let mut child = Command::new(CAIRN)
            .args(["demo", "--base-port", "0", "--redis-base-port", "0", "--data-dir"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cairn demo");
        let stdin = child.stdin.take().expect("demo stdin");
        let stdout = child.stdout.take().expect("demo stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo { child, stdin, lines, seen: Vec::new() }
    }

    /// Waits for a line of the demo's output that contains `needle`; returns it.
    fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("the demo never printed {needle:?}; it printed:\n{}", self.seen.join("\n"));
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").expect("write to the demo's prompt");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = self.child.wait();
        }
    }
}

fn cli(addr: &str, args: &[&str]) -> Output {
    Command::new(CAIRN).args(["--addr", addr]).args(args).output().expect("run the cairn CLI")
}

/// Runs a CLI command until it succeeds (a range may be electing a leader); returns its stdout.
fn cli_ok(addr: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cli(addr, args);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "cairn {args:?} through {addr} kept failing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A node's gRPC address from the demo's list of endpoints.
fn grpc_of(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "grpc").expect("a grpc address") + 1;
    words[at].to_string()
}

#[test]
fn the_demo_keeps_serving_when_a_node_dies_and_restarts_it_on_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut demo = Demo::start(dir.path());
    demo.expect("Cairn demo cluster is up", Duration::from_secs(240));
    let node1 = grpc_of(&demo.expect("node 1 ", Duration::from_secs(5)));
    let _ = demo.expect("node 2 ", Duration::from_secs(5));
    let node3 = grpc_of(&demo.expect("node 3 ", Duration::from_secs(5)));
    cli_ok(&node1, &["table", "create", "failover"]);
    cli_ok(&node1, &["put", "failover", "before", "1"]);

    demo.send("kill 3");
    demo.expect("node 3 killed", Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(2));
    assert!(matches!(demo.child.try_wait(), Ok(None)), "the demo stopped when node 3 was killed");
    // Two of three replicas remain: writes and linearizable reads go on.
    cli_ok(&node1, &["put", "failover", "during", "2"]);
    assert!(cli_ok(&node1, &["get", "failover", "during"]).contains('2'));
    assert!(!cli(&node3, &["get", "failover", "before"]).status.success(), "killed node 3 still answers");

    demo.send("start 3");
    demo.expect("node 3 started", Duration::from_secs(120));
    // Back on its old address, it serves (through its own gateway) the write it missed.
    let during = cli_ok(&node3, &["get", "failover", "during"]);
    assert!(during.contains('2'), "the restarted node read {during:?}");

    demo.send("status");
    demo.expect("node 3 running", Duration::from_secs(5));

    // A node that dies on its own (not through the prompt) is noticed and can be restarted.
    demo.send("status");
    let line = demo.expect("node 2 running (pid ", Duration::from_secs(5));
    let pid: i32 = line.rsplit("pid ").next().and_then(|p| p.trim_end_matches(')').parse().ok()).expect("a pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill node 2");
    demo.expect("node 2 exited", Duration::from_secs(15));
    assert!(cli_ok(&node1, &["get", "failover", "during"]).contains('2'));
    demo.send("start 2");
    demo.expect("node 2 started", Duration::from_secs(120));

    demo.send("quit");
    demo.expect("stopped.", Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(demo.child.try_wait(), Ok(Some(_))) {
        assert!(Instant::now() < deadline, "the demo did not exit after quit");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!cli(&node1, &["get", "failover", "before"]).status.success(), "a node outlived the demo");
}
