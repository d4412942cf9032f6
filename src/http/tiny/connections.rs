//! Open connections of one server, counted from the kernel's socket tables: tiny_http 0.12
//! cannot tell (`num_connections()` panics), and counting threads would count every thread
//! of the process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
/// thread.
pub(super) struct Connections {
    last: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Why they cannot be counted here, if they cannot.
    cannot: Option<String>,
}

impl Connections {
    /// Counts the connections of `source` on a thread of its own, until dropped.
    pub(super) fn start(source: Option<Source>) -> Connections {
        let last = Arc::new(AtomicUsize::new(UNKNOWN));
        let stop = Arc::new(AtomicBool::new(false));
        let cannot = match &source {
            None => Some("the listening address is neither TCP nor a Unix socket".into()),
            Some(source) => count(source)
                .map(|n| last.store(n, Ordering::Relaxed))
                .err()
                .map(|e| format!("cannot read /proc/self/net: {e}")),
        };
        if let (None, Some(source)) = (&cannot, source) {
            let (last, stop) = (last.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name("connections".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(COUNT_EVERY);
                        let n = count(&source).unwrap_or(UNKNOWN);
                        last.store(n, Ordering::Relaxed);
                    }
                });
            if let Err(e) = spawned {
                log::warn!("connections are counted once only: no thread for it: {e}");
            }
        }
        Connections { last, stop, cannot }
    }

    /// Why connections cannot be counted here, if they cannot.
    pub(super) fn cannot_count(&self) -> Option<&str> {
        self.cannot.as_deref()
    }

    /// The last count, if there is one.
    pub(super) fn open(&self) -> Option<usize> {
        Some(self.last.load(Ordering::Relaxed)).filter(|n| *n != UNKNOWN)
    }
}

impl Drop for Connections {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn count(source: &Source) -> std::io::Result<usize> {
    match source {
        Source::Tcp(port) => {
            let v4 = std::fs::read_to_string("/proc/self/net/tcp")?;
            // A kernel without IPv6 has no tcp6 table.
            let v6 = std::fs::read_to_string("/proc/self/net/tcp6").unwrap_or_default();
            Ok(tcp_connections(&v4, *port) + tcp_connections(&v6, *port))
        }
        Source::Unix(path) => Ok(unix_connections(
            &std::fs::read_to_string("/proc/self/net/unix")?,
            path,
        )),
    }
}

/// Lines of a `/proc/net/tcp` table whose local port is `port` and whose state is
/// ESTABLISHED (01) or CLOSE_WAIT (08).
fn tcp_connections(table: &str, port: u16) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1).unwrap_or("");
            let state = fields.nth(1).unwrap_or("");
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && matches!(state, "01" | "08")
        })
        .count()
}

/// Lines of `/proc/net/unix` for sockets bound to `path` and connected (state 03): the
/// connections the listener accepted share its address.
fn unix_connections(table: &str, path: &str) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() >= 8 && fields[5] == "03" && fields[7] == path
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
        assert_eq!(tcp_connections(TCP, 8080), 2);
        assert_eq!(tcp_connections(TCP, 8081), 0);
        assert_eq!(tcp_connections("", 8080), 0);
    }

    #[test]
    fn unix_counts_connected_sockets_on_the_path() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 2001 /run/lambda-api.sock
0000000000000000: 00000003 00000000 00000000 0001 03 2002 /run/lambda-api.sock
0000000000000000: 00000003 00000000 00000000 0001 03 2003
0000000000000000: 00000003 00000000 00000000 0001 03 2004 /run/other.sock
";
        assert_eq!(unix_connections(table, "/run/lambda-api.sock"), 1);
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
        // The kernel lists a connection as soon as it is made, accepted or not.
        let before = count(&source).unwrap();
        let _a = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let _b = std::net::TcpStream::connect(other.local_addr().unwrap()).unwrap();
        assert_eq!(count(&source).unwrap(), before + 1);
    }
}
