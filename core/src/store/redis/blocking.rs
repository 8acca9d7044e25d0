//! The blocking connection of the pool: every read and write waits with
//! `ppoll(2)` for what is left of the call's deadline, so a blocking call ends
//! at its deadline to within the scheduler's wake-up, not a kernel tick later.
//!
//! Why not redis-rs's `Connection`: it can bound a read only by the socket's
//! `SO_RCVTIMEO`, which Linux counts in scheduler ticks (rounded up to the
//! next tick: 4 ms on a HZ=250 kernel), and it does not expose its socket.
//! Measured with the deadline test (20 ms timeout, Redis frozen by SIGSTOP):
//! redis-rs's connection answered at 20.7-24.4 ms, this one at the figures in
//! benches/README.md ("A blocking call's deadline"). Everything above the
//! socket is redis-rs's: the RESP parser ([`redis::Parser`]), the commands
//! and the script calls (this type is a [`redis::ConnectionLike`]); rustls
//! for `rediss://`, configured as redis-rs configures it (the given CA, or
//! the system's trust store). Standalone servers and Sentinel's master only:
//! a Cluster's blocking connection is `connection::ClusterConn`.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo, RedisResult, Value};
use rustix::event::{PollFd, PollFlags, Timespec};

/// A non-blocking socket whose reads and writes wait (`ppoll`) until
/// `deadline` at most, then fail with [`io::ErrorKind::TimedOut`].
struct Timed<S> {
    sock: S,
    deadline: Instant,
}

/// The longest single `ppoll` (see [`wait`]).
const POLL_STEP: Duration = Duration::from_millis(50);

/// Waits until `sock` is ready for `flags` or `deadline` passes.
fn wait(sock: &impl AsFd, flags: PollFlags, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "the call's deadline passed"))?;
        // Linux lets a poll of t wake up to t/1000 late (its timer slack; a
        // 500 ms call ended 0.4-0.5 ms later in one poll than in these steps);
        // in steps of at most 50 ms it wakes within the thread's 50 µs slack.
        let step = left.min(POLL_STEP);
        let timeout = Timespec {
            tv_sec: i64::try_from(step.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: step.subsec_nanos().into(),
        };
        let mut fds = [PollFd::new(sock, flags)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            // Readable, writable, hung up or failed: the next read or write says which.
            Ok(n) if n > 0 => return Ok(()),
            // Timed out (the loop's check reports it) or interrupted: again.
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

impl<S: AsFd> Timed<S> {
    /// `op` on the socket, waiting (`ppoll` for `flags`) whenever it would block.
    fn retry<T>(
        &mut self,
        flags: PollFlags,
        mut op: impl FnMut(&mut S) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            match op(&mut self.sock) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(&self.sock, flags, self.deadline)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

impl<S: Read + AsFd> Read for Timed<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.retry(PollFlags::IN, |s| s.read(buf))
    }
}

impl<S: Write + AsFd> Write for Timed<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.retry(PollFlags::OUT, |s| s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, Timed<TcpStream>>;

enum Stream {
    Tcp(Timed<TcpStream>),
    // Boxed: rustls's connection state is ~1 KiB.
    Tls(Box<TlsStream>),
    Unix(Timed<UnixStream>),
}

impl Stream {
    fn set_deadline(&mut self, deadline: Instant) {
        match self {
            Self::Tcp(s) => s.deadline = deadline,
            Self::Tls(s) => s.sock.deadline = deadline,
            Self::Unix(s) => s.deadline = deadline,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Tls(s) => s.flush(),
            Self::Unix(s) => s.flush(),
        }
    }
}

/// One blocking connection to a standalone Redis (or Sentinel's master),
/// bounded by a deadline set before each call ([`Conn::set_deadline`]).
pub(super) struct Conn {
    stream: Stream,
    parser: redis::Parser,
    db: i64,
    open: bool,
}

impl Conn {
    /// Connects to `info`'s server (TCP connect within `connect_by`), then
    /// authenticates and selects its database within `ready_by`. `tls` gives
    /// the rustls configuration for a `rediss://` address. `None` for an
    /// address this type does not handle (`rediss://...#insecure`): the caller
    /// uses redis-rs's connection, which refuses it the same way as before.
    pub(super) fn connect(
        info: &ConnectionInfo,
        tls: impl FnOnce() -> RedisResult<Arc<rustls::ClientConfig>>,
        connect_by: Instant,
        ready_by: Instant,
    ) -> RedisResult<Option<Self>> {
        let stream = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Stream::Tcp(tcp(host, *port, connect_by, ready_by)?),
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                ..
            } => {
                let name = rustls::pki_types::ServerName::try_from(host.as_str())
                    .map_err(|e| invalid("not a TLS server name", e.to_string()))?
                    .to_owned();
                let conn = rustls::ClientConnection::new(tls()?, name)
                    .map_err(|e| invalid("TLS set-up failed", e.to_string()))?;
                let sock = tcp(host, *port, connect_by, ready_by)?;
                // The handshake runs within the first command's deadline.
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, sock)))
            }
            ConnectionAddr::Unix(path) => {
                let sock = UnixStream::connect(path)?;
                sock.set_nonblocking(true)?;
                Stream::Unix(Timed {
                    sock,
                    deadline: ready_by,
                })
            }
            _ => return Ok(None),
        };
        let settings = info.redis_settings();
        let mut conn = Self {
            stream,
            parser: redis::Parser::new(),
            db: settings.db(),
            open: true,
        };
        match (settings.username(), settings.password()) {
            (Some(user), Some(password)) => {
                redis::cmd("AUTH")
                    .arg(user)
                    .arg(password)
                    .query::<()>(&mut conn)?;
            }
            (None, Some(password)) => redis::cmd("AUTH").arg(password).query::<()>(&mut conn)?,
            _ => {}
        }
        if conn.db != 0 {
            redis::cmd("SELECT").arg(conn.db).query::<()>(&mut conn)?;
        }
        Ok(Some(conn))
    }

    /// Every read and write until the next call of this ends by `deadline`.
    pub(super) fn set_deadline(&mut self, deadline: Instant) {
        self.stream.set_deadline(deadline);
    }

    fn send(&mut self, cmd: &[u8]) -> RedisResult<()> {
        // flush: rustls may still hold TLS records (a no-op for plain sockets).
        let sent = self
            .stream
            .write_all(cmd)
            .and_then(|()| self.stream.flush());
        sent.map_err(|e| self.broken(e.into()))
    }

    fn receive(&mut self) -> RedisResult<Value> {
        loop {
            match self.parser.parse_value(&mut self.stream) {
                // RESP3 pushes are not replies (none without RESP3 and a subscription).
                Ok(Value::Push { .. }) => {}
                Ok(v) => return Ok(v),
                Err(e) => return Err(self.broken(e)),
            }
        }
    }

    /// A failed read or write leaves the connection out of step: closed.
    fn broken(&mut self, e: redis::RedisError) -> redis::RedisError {
        self.open = false;
        e
    }
}

/// A TCP connection to `host:port` (its first address that answers by
/// `connect_by`), non-blocking, without Nagle's delay.
fn tcp(
    host: &str,
    port: u16,
    connect_by: Instant,
    ready_by: Instant,
) -> RedisResult<Timed<TcpStream>> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        let left = connect_by
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "the connect timeout passed"))?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(sock) => {
                sock.set_nodelay(true)?;
                sock.set_nonblocking(true)?;
                return Ok(Timed {
                    sock,
                    deadline: ready_by,
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the host has no address"))
        .into())
}

fn invalid(what: &'static str, detail: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, what, detail))
}

/// The rustls configuration for `rediss://`: the server verified against the
/// CA certificates in `ca_pem`, or else the system's trust store (as redis-rs
/// does with its `tls-rustls` feature).
pub(super) fn tls_config(ca_pem: Option<&[u8]>) -> RedisResult<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| invalid("the CA PEM does not parse", e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| invalid("not a CA certificate", e.to_string()))?;
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        if let Some(e) = found.errors.first() {
            return Err(invalid("the system's trust store", e.to_string()));
        }
        for cert in found.certs {
            roots
                .add(cert)
                .map_err(|e| invalid("not a CA certificate", e.to_string()))?;
        }
    }
    Ok(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

impl redis::ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        self.send(cmd)?;
        self.receive()
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.send(cmd)?;
        let mut values = Vec::with_capacity(count);
        for i in 0..offset + count {
            let v = self.receive()?;
            if i >= offset {
                values.push(v);
            }
        }
        Ok(values)
    }

    fn get_db(&self) -> i64 {
        self.db
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    use redis::IntoConnectionInfo;

    use super::{Conn, RedisResult, invalid};

    /// A peer on loopback that answers `replies`, one per command it reads
    /// (`None`: reads on and never answers), and returns what it received.
    fn peer(replies: Vec<Option<Vec<u8>>>) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0; 1 << 16];
            for reply in replies {
                // One command: read until the bytes so far end a command (the
                // commands here are small and end with "\r\n").
                loop {
                    let n = sock.read(&mut buf).unwrap_or(0);
                    got.extend_from_slice(&buf[..n]);
                    if n == 0 || got.ends_with(b"\r\n") {
                        break;
                    }
                }
                match reply {
                    Some(r) => sock.write_all(&r).unwrap(),
                    None => {
                        while sock.read(&mut buf).unwrap_or(0) > 0 {}
                        break;
                    }
                }
            }
            got
        });
        (port, handle)
    }

    fn connect(url: &str, deadline: Duration) -> Conn {
        let info = url.into_connection_info().unwrap();
        let by = Instant::now() + deadline;
        Conn::connect(&info, || Err(invalid("no TLS here", String::new())), by, by)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn credentials_and_database_are_sent_and_a_long_reply_is_read_whole() {
        let big = vec![b'x'; 4 << 20];
        let mut reply = format!("${}\r\n", big.len()).into_bytes();
        reply.extend_from_slice(&big);
        reply.extend_from_slice(b"\r\n");
        let (port, got) = peer(vec![
            Some(b"+OK\r\n".to_vec()),
            Some(b"+OK\r\n".to_vec()),
            Some(reply),
        ]);
        let mut conn = connect(
            &format!("redis://user:pw@127.0.0.1:{port}/3"),
            Duration::from_secs(5),
        );
        let value: Vec<u8> = redis::cmd("GET").arg("k").query(&mut conn).unwrap();
        // 4 MiB arrive in many reads, each waiting on the socket (WouldBlock, poll).
        assert_eq!(value, big);
        assert!(redis::ConnectionLike::is_open(&conn));
        let got = String::from_utf8(got.join().unwrap()).unwrap();
        assert_eq!(
            got,
            "*3\r\n$4\r\nAUTH\r\n$4\r\nuser\r\n$2\r\npw\r\n\
             *2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n\
             *2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
    }

    #[test]
    fn a_reply_that_does_not_parse_closes_the_connection() {
        let (port, _peer) = peer(vec![Some(b"?not resp\r\n".to_vec())]);
        let mut conn = connect(
            &format!("redis://127.0.0.1:{port}/"),
            Duration::from_secs(5),
        );
        assert!(redis::cmd("PING").query::<String>(&mut conn).is_err());
        // Out of step: the pool makes another (`with_conn` checks `is_open`).
        assert!(!redis::ConnectionLike::is_open(&conn));
    }

    /// `call` under a 30 ms deadline: a timeout, not before the deadline
    /// (generously after: a loaded machine may be slow to wake the thread),
    /// and the connection closed (out of step).
    fn times_out_at_the_deadline(conn: &mut Conn, call: impl FnOnce(&mut Conn) -> RedisResult<()>) {
        let timeout = Duration::from_millis(30);
        let started = Instant::now();
        conn.set_deadline(started + timeout);
        let err = call(conn).unwrap_err();
        let took = started.elapsed();
        assert!(err.is_timeout(), "{err}");
        assert!(took >= timeout, "answered before the deadline: {took:?}");
        assert!(took < timeout + Duration::from_millis(500), "{took:?}");
        assert!(!redis::ConnectionLike::is_open(conn), "out of step: closed");
    }

    #[test]
    fn a_silent_peer_times_the_read_out_at_the_deadline() {
        let (port, _peer) = peer(vec![None]);
        let mut conn = connect(
            &format!("redis://127.0.0.1:{port}/"),
            Duration::from_secs(5),
        );
        times_out_at_the_deadline(&mut conn, |c| redis::cmd("PING").query::<()>(c));
    }

    #[test]
    fn a_peer_that_never_reads_times_the_write_out_at_the_deadline() {
        // The peer holds the connection and reads nothing: 64 MiB fill the
        // socket buffers (a few MiB) and the write waits (poll for POLLOUT)
        // until the deadline.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _held = std::thread::spawn(move || {
            let held = listener.accept();
            std::thread::park();
            drop(held);
        });
        let mut conn = connect(
            &format!("redis://127.0.0.1:{port}/"),
            Duration::from_secs(5),
        );
        times_out_at_the_deadline(&mut conn, |c| {
            redis::cmd("SET")
                .arg("k")
                .arg(vec![0u8; 64 << 20])
                .query::<()>(c)
        });
    }
}
