//! A private network for process-level chaos tests: one network namespace per
//! node, each joined by a veth pair to a bridge in the test's own namespace,
//! and nftables rules inside each node's namespace to cut links.
//!
//! Everything is named after the test's PID so that concurrent or crashed runs
//! never collide, and everything is deleted when the lab is dropped. Needs
//! root, iproute2 and nftables.
#![allow(dead_code)]

use std::process::Command;

pub struct NetLab {
    tag: String,
    subnet: String,
    bridge: String,
    nodes: usize,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("network lab: {e}");
    }
}

impl NetLab {
    /// Creates the bridge and `nodes` namespaces. Panics with the failing
    /// command when the machine cannot do it (not root, no nftables).
    pub fn create(nodes: usize) -> NetLab {
        // Labs of one test binary differ by a sequence letter: the kernel tears a
        // deleted namespace's links down asynchronously, so names are never reused.
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 26;
        let pid = std::process::id();
        let tag = format!("cz{}{}", pid % 100_000, (b'a' + seq as u8) as char);
        // 10.X.Y.0/24, X in 100..199 from the PID and the sequence, Y from the PID:
        // away from common LAN ranges.
        let subnet = format!("10.{}.{}", 100 + (pid / 250 + seq) % 100, pid % 250);
        let lab = NetLab { bridge: format!("{tag}br"), tag, subnet, nodes };
        must(&["ip", "link", "add", &lab.bridge, "type", "bridge"]);
        must(&["ip", "addr", "add", &format!("{}/24", lab.host_ip()), "dev", &lab.bridge]);
        must(&["ip", "link", "set", &lab.bridge, "up"]);
        for i in 0..nodes {
            let ns = lab.ns(i);
            let (outer, inner) = (format!("{}v{i}", lab.tag), format!("{}p{i}", lab.tag));
            must(&["ip", "netns", "add", &ns]);
            must(&["ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner]);
            must(&["ip", "link", "set", &inner, "netns", &ns]);
            must(&["ip", "link", "set", &outer, "master", &lab.bridge]);
            must(&["ip", "link", "set", &outer, "up"]);
            must(&["ip", "-n", &ns, "addr", "add", &format!("{}/24", lab.ip(i)), "dev", &inner]);
            must(&["ip", "-n", &ns, "link", "set", &inner, "up"]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            must(&["ip", "netns", "exec", &ns, "nft", "add", "table", "inet", "chaos"]);
            for (chain, hook) in [("out", "output"), ("in", "input")] {
                let spec = format!("{{ type filter hook {hook} priority 0; policy accept; }}");
                must(&["ip", "netns", "exec", &ns, "nft", "add", "chain", "inet", "chaos", chain, &spec]);
            }
        }
        lab
    }

    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Node `i`'s address, reachable from the test's namespace and from the other nodes.
    pub fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, 11 + i)
    }

    /// The test's own address on the bridge (clients connect from here).
    pub fn host_ip(&self) -> String {
        format!("{}.1", self.subnet)
    }

    fn nft(&self, i: usize, args: &[&str]) {
        let ns = self.ns(i);
        let mut cmd = vec!["ip", "netns", "exec", &ns, "nft"];
        cmd.extend_from_slice(args);
        must(&cmd);
    }

    /// Drops every packet from node `from` to node `to` (one direction only).
    /// Rules on both ends make the cut hold whichever side's hook sees the packet.
    pub fn block(&self, from: usize, to: usize) {
        let (src, dst) = (self.ip(from), self.ip(to));
        self.nft(from, &["add", "rule", "inet", "chaos", "out", "ip", "daddr", &dst, "drop"]);
        self.nft(to, &["add", "rule", "inet", "chaos", "in", "ip", "saddr", &src, "drop"]);
    }

    /// Cuts node `i` off from every other node, both ways. Clients still reach it.
    pub fn isolate(&self, i: usize) {
        for j in (0..self.nodes).filter(|&j| j != i) {
            self.block(i, j);
            self.block(j, i);
        }
    }

    /// Splits the nodes into groups that cannot talk to each other.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        for (a, ga) in groups.iter().enumerate() {
            for (b, gb) in groups.iter().enumerate() {
                if a != b {
                    for &x in ga {
                        for &y in gb {
                            self.block(x, y);
                        }
                    }
                }
            }
        }
    }

    /// Drops `percent`% of node `i`'s packets to the other nodes, at random.
    pub fn lossy(&self, i: usize, percent: u32) {
        let pct = percent.min(100).to_string();
        let subnet = format!("{}.0/24", self.subnet);
        let host = self.host_ip();
        self.nft(
            i,
            &[
                "add", "rule", "inet", "chaos", "out", "ip", "daddr", &subnet, "ip", "daddr", "!=", &host, "numgen",
                "random", "mod", "100", "<", &pct, "drop",
            ],
        );
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) {
        for i in 0..self.nodes {
            for chain in ["out", "in"] {
                self.nft(i, &["flush", "chain", "inet", "chaos", chain]);
            }
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = run(&["ip", "link", "del", &format!("{}v{i}", self.tag)]);
            let _ = run(&["ip", "netns", "del", &self.ns(i)]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}
