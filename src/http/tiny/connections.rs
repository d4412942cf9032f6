//! Open connections of one server, counted from the kernel's socket tables: tiny_http 0.12
//! cannot tell (`num_connections()` panics), and counting threads would count every thread
//! of the process.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::lock;

/// How often the count is taken again. Reading the tables takes milliseconds (the kernel
/// walks every socket of the host), so a thread of its own reads them and requests read its
/// last count; a closed connection stops counting within this time.
const COUNT_EVERY: Duration = Duration::from_millis(250);
/// The count while there is none.
const UNKNOWN: usize = usize::MAX;

/// Where a server's connections are listed by the kernel.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Source {
    /// `/proc/self/net/tcp` and `tcp6` (the process's network namespace; readable under
    /// systemd's `ProcSubset=pid`): sockets whose local port is the server's.
    Tcp(u16),
    /// `/proc/self/net/unix`: connected sockets bound to the server's path.
    Unix(String),
}

/// A server's open connections. A connection counts while it is established, or closed by
/// its client but not yet by the service (`CLOSE_WAIT`): both hold a socket, and usually a
/// thread. Also the TCP connections the service has told to close: tiny_http 0.12 cannot
/// close a connection from the server's side, so nothing more is served on them, until the
/// kernel's table no longer lists them.
pub(super) struct Connections {
    last: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Why they cannot be counted here, if they cannot.
    cannot: Option<String>,
    /// Peers of connections told to close that are still open.
    closed: Arc<ClosedPeers>,
}

/// The peers of connections told to close. Every request asks; while there are none (nearly
/// always), the answer is one atomic read.
#[derive(Default)]
struct ClosedPeers {
    any: AtomicBool,
    peers: Mutex<HashSet<SocketAddr>>,
}

impl ClosedPeers {
    fn insert(&self, peer: SocketAddr) {
        lock(&self.peers).insert(peer);
        self.any.store(true, Ordering::Release);
    }

    fn contains(&self, peer: &SocketAddr) -> bool {
        self.any.load(Ordering::Acquire) && lock(&self.peers).contains(peer)
    }

    /// Forgets the peers whose connections are no longer open.
    fn keep_open(&self, open: &HashSet<SocketAddr>) {
        let mut peers = lock(&self.peers);
        peers.retain(|p| open.contains(p));
        self.any.store(!peers.is_empty(), Ordering::Release);
    }
}

/// What one reading of the kernel's table found.
struct Survey {
    open: usize,
    /// The open connections' peers, for TCP.
    peers: Option<HashSet<SocketAddr>>,
}

impl Connections {
    /// Counts the connections of `source` on a thread of its own, until dropped.
    pub(super) fn start(source: Option<Source>) -> Connections {
        let last = Arc::new(AtomicUsize::new(UNKNOWN));
        let stop = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(ClosedPeers::default());
        let mut cannot = match &source {
            None => Some("the listening address is neither TCP nor a Unix socket".into()),
            Some(source) => survey(source)
                .map(|s| last.store(s.open, Ordering::Relaxed))
                .err()
                .map(|e| format!("cannot read /proc/self/net: {e}")),
        };
        if let (None, Some(source)) = (&cannot, source) {
            let (last, stop, closed) = (last.clone(), stop.clone(), closed.clone());
            let spawned = std::thread::Builder::new()
                .name("connections".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(COUNT_EVERY);
                        let Ok(found) = survey(&source) else {
                            last.store(UNKNOWN, Ordering::Relaxed);
                            continue;
                        };
                        last.store(found.open, Ordering::Relaxed);
                        if let Some(peers) = found.peers {
                            closed.keep_open(&peers);
                        }
                    }
                });
            if let Err(e) = spawned {
                cannot = Some(format!("no thread to count them: {e}"));
            }
        }
        Connections {
            last,
            stop,
            cannot,
            closed,
        }
    }

    /// Why connections cannot be counted here, if they cannot.
    pub(super) fn cannot_count(&self) -> Option<&str> {
        self.cannot.as_deref()
    }

    /// The last count, if there is one.
    pub(super) fn open(&self) -> Option<usize> {
        Some(self.last.load(Ordering::Relaxed)).filter(|n| *n != UNKNOWN)
    }

    /// Notes that the connection from `peer` was told to close (where connections are
    /// followed: else nothing would ever forget it).
    pub(super) fn told_to_close(&self, peer: SocketAddr) {
        if self.cannot.is_none() {
            self.closed.insert(peer);
        }
    }

    /// Whether the connection from `peer` was told to close and is still open.
    pub(super) fn was_told_to_close(&self, peer: &SocketAddr) -> bool {
        self.closed.contains(peer)
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn survey(source: &Source) -> std::io::Result<Survey> {
    // The kernel's tables list every process's sockets: another user's listening on another
    // address with the same port, say. Only this process's count.
    let own = own_sockets()?;
    match source {
        Source::Tcp(port) => {
            let v4 = std::fs::read_to_string("/proc/self/net/tcp")?;
            // A kernel without IPv6 has no tcp6 table.
            let v6 = std::fs::read_to_string("/proc/self/net/tcp6").unwrap_or_default();
            // One peer address is one connection: the local side is the same for all.
            let peers: HashSet<SocketAddr> = (tcp_peers(&v4, *port, &own))
                .chain(tcp_peers(&v6, *port, &own))
                .collect();
            Ok(Survey {
                open: peers.len(),
                peers: Some(peers),
            })
        }
        Source::Unix(path) => Ok(Survey {
            open: unix_connections(&std::fs::read_to_string("/proc/self/net/unix")?, path, &own),
            peers: None,
        }),
    }
}

/// The inodes of the sockets this process holds open (`/proc/self/fd` links to
/// `socket:[inode]`).
fn own_sockets() -> std::io::Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // Closed meanwhile.
        };
        let inode: Option<u64> = (target.to_str())
            .and_then(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok());
        inodes.extend(inode);
    }
    Ok(inodes)
}

/// The peers of the lines of a `/proc/net/tcp` table whose local port is `port`, whose
/// state is ESTABLISHED (01) or CLOSE_WAIT (08), and whose socket is one of `own`.
fn tcp_peers<'t>(
    table: &'t str,
    port: u16,
    own: &'t HashSet<u64>,
) -> impl Iterator<Item = SocketAddr> + 't {
    table.lines().skip(1).filter_map(move |line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = endpoint(fields.get(1)?)?;
        let remote = endpoint(fields.get(2)?)?;
        let state = *fields.get(3)?;
        let inode: u64 = fields.get(9)?.parse().ok()?;
        let counted = local.port() == port && matches!(state, "01" | "08") && own.contains(&inode);
        counted.then_some(remote)
    })
}

/// An address as `/proc/net/tcp` and `tcp6` write it: the IP as 32-bit words in the
/// machine's byte order, then the port, all in hex.
fn endpoint(hex: &str) -> Option<SocketAddr> {
    let (ip, port) = hex.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::from(word(0)?),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Lines of `/proc/net/unix` for sockets bound to `path`, connected (state 03) and one of
/// `own`: the connections the listener accepted share its address.
fn unix_connections(table: &str, path: &str, own: &HashSet<u64>) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let inode = fields.get(6).and_then(|i| i.parse::<u64>().ok());
            fields.len() >= 8
                && fields[5] == "03"
                && fields[7] == path
                && inode.is_some_and(|i| own.contains(&i))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2B4 01 00000000:00000000 00:00000000 00000000     0        0 101 1 0 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:D2B6 08 00000000:00000000 00:00000000 00000000     0        0 102 1 0 20 4 30 10 -1
   3: 0100007F:1F90 0100007F:D2B8 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0 20 4 30 10 -1
   4: 0100007F:D2B4 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 103 1 0 20 4 30 10 -1
";

    #[test]
    fn tcp_counts_open_connections_on_the_port_only() {
        // Port 0x1F90 is 8080: one established, one closed by its client; the listener, a
        // TIME_WAIT and the client side of a loopback connection do not count.
        let own: HashSet<u64> = [100, 101, 102, 103].into();
        let peers: Vec<SocketAddr> = tcp_peers(TCP, 8080, &own).collect();
        let local = std::net::Ipv4Addr::LOCALHOST;
        assert_eq!(
            peers,
            [
                SocketAddr::from((local, 0xD2B4)),
                SocketAddr::from((local, 0xD2B6))
            ]
        );
        assert_eq!(tcp_peers(TCP, 8081, &own).count(), 0);
        assert_eq!(tcp_peers("", 8080, &own).count(), 0);
        // Another process's socket on the same port does not count.
        let theirs: HashSet<u64> = [101].into();
        assert_eq!(tcp_peers(TCP, 8080, &theirs).count(), 1);
        let v6 = endpoint("0000000000000000FFFF00000100007F:1F90").unwrap();
        assert_eq!(v6, "[::ffff:127.0.0.1]:8080".parse().unwrap());
    }

    #[test]
    fn unix_counts_connected_sockets_on_the_path() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 2001 /run/lambda-api.sock
0000000000000000: 00000003 00000000 00000000 0001 03 2002 /run/lambda-api.sock
0000000000000000: 00000003 00000000 00000000 0001 03 2003
0000000000000000: 00000003 00000000 00000000 0001 03 2004 /run/other.sock
";
        let own: HashSet<u64> = [2001, 2002, 2003, 2004].into();
        assert_eq!(unix_connections(table, "/run/lambda-api.sock", &own), 1);
        assert_eq!(
            unix_connections(table, "/run/lambda-api.sock", &[2001].into()),
            0
        );
    }

    /// A connection told to close is remembered while it is open, and forgotten within a
    /// survey once it has closed.
    #[test]
    fn a_connection_told_to_close_is_forgotten_once_closed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let connections =
            Connections::start(Some(Source::Tcp(listener.local_addr().unwrap().port())));
        if connections.cannot_count().is_some() {
            return; // Not Linux: nothing is remembered, as nothing could be forgotten.
        }
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (served, peer) = listener.accept().unwrap();
        connections.told_to_close(peer);
        std::thread::sleep(COUNT_EVERY * 2);
        assert!(connections.was_told_to_close(&peer), "forgotten while open");
        drop((client, served));
        let started = std::time::Instant::now();
        while connections.was_told_to_close(&peer) {
            assert!(started.elapsed() < COUNT_EVERY * 8, "never forgotten");
            std::thread::sleep(COUNT_EVERY / 5);
        }
    }

    /// Another process listening on another address with the same port, and connecting to
    /// itself a few times, adds nothing to the count.
    #[test]
    fn another_process_on_the_same_port_does_not_count() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let source = Source::Tcp(port);
        if Connections::start(Some(source.clone()))
            .cannot_count()
            .is_some()
        {
            return; // Not Linux.
        }
        let script = "import socket, sys, time\n\
            l = socket.socket(); l.bind(('127.0.0.2', int(sys.argv[1]))); l.listen(16)\n\
            kept = []\n\
            for _ in range(5):\n    c = socket.create_connection(('127.0.0.2', int(sys.argv[1])))\n    kept += [c, l.accept()[0]]\n\
            print('ready', flush=True); time.sleep(30)\n";
        // python3 is on every machine the tests run on: without it this test must fail, not
        // pass having checked nothing.
        let mut child = std::process::Command::new("python3")
            .args(["-c", script, &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 plays the neighbour");
        let mut ready = String::new();
        let out = child.stdout.take().unwrap();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut ready);
        let counted = survey(&source).unwrap().open;
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(ready.trim(), "ready", "the neighbour could not listen");
        assert_eq!(counted, 0, "another process's sockets were counted");
    }

    /// The count follows a real connection to a real listener, and only that listener's.
    #[test]
    fn a_listener_counts_its_own_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let source = Source::Tcp(listener.local_addr().unwrap().port());
        if Connections::start(Some(source.clone()))
            .cannot_count()
            .is_some()
        {
            return; // Not Linux: the cap is off, and start-up says so.
        }
        // A connection counts once accepted (its socket is the process's).
        let before = survey(&source).unwrap();
        let a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _served = listener.accept().unwrap();
        let _b = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        let after = survey(&source).unwrap();
        assert_eq!(after.open, before.open + 1);
        assert!(after.peers.unwrap().contains(&a.local_addr().unwrap()));
    }
}
