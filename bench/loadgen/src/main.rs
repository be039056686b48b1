//! tg-loadgen: the two clients bench/compare.sh needs and apt does not ship.
//!
//! `tg-loadgen rate URL --rate R --duration S [--conns C] [--ca FILE] [--sni NAME]`
//!   Open-loop, constant-rate HTTP/1.1 keep-alive GETs over C connections (plaintext or TLS).
//!   Request i is due at t0 + i/R on connection i % C, and goes out at that time to within a few
//!   µs: each connection waits on its own timerfd (timer slack set to 1 ns), not on tokio's
//!   timer wheel, whose 1 ms ticks would release the requests in bursts of R/1000 and measure
//!   the queue each burst builds rather than the server. Latency is measured from the actual
//!   send time, except when a request went out late because its connection was still busy
//!   with the previous response: then it counts from its due time (the coordinated-omission
//!   correction of wrk2, without counting the client's own timer lag). Prints one JSON line.
//!
//! `tg-loadgen conn URL --duration S [--conns C]`
//!   Closed loop, C workers, each: new TCP connection, full TLS handshake (session resumption
//!   disabled, so never a resumed session), one GET with `Connection: close`, close_notify,
//!   close. To keep the client's own cost low it skips certificate and handshake-signature
//!   verification (the server still does its whole handshake: ECDHE + ECDSA signature).
//!   Latency is connect + handshake + request + response. Prints one JSON line.
//!
//! `tg-loadgen idle URL --conns N [--requests R] [--parallel P] [--hold S] [--ready-file F] [--ca FILE]`
//!   Opens N keep-alive connections, sends R GETs on each (default 1, so every connection has
//!   served a request, like a real idle keep-alive client; 0: connected and, over TLS, through
//!   the handshake only, like a preconnected one), writes "N_ok" to F, and holds them until S
//!   seconds passed or F.release exists. Used for the per-connection memory figure.
//!
//! One thread (current-thread tokio runtime); pin it with taskset.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A one-shot timer with the kernel's hrtimer precision, for pacing requests: a
/// non-blocking timerfd registered with tokio's reactor.
struct Pacer(AsyncFd<std::os::fd::OwnedFd>);

impl Pacer {
    fn new() -> io::Result<Pacer> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; a non-negative result is a new fd we own.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nobody else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd's raw fd stays open and the same until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(Pacer(fd))
    }

    /// Waits until `due` (returns at once if it has passed).
    async fn sleep_until(&self, due: Instant) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let wait = due.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        let fd = self.0.get_ref().as_raw_fd();
        // SAFETY: fd is a valid timerfd; spec is a valid itimerspec; old value not wanted.
        if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut ready = self.0.readable().await?;
            // The expiration count (8 bytes); `try_io` clears the readiness on WouldBlock.
            let read = ready.try_io(|_| {
                let mut expirations = [0u8; 8];
                // SAFETY: reads at most 8 bytes into an 8-byte buffer.
                match unsafe { libc::read(fd, expirations.as_mut_ptr().cast(), 8) } {
                    8 => Ok(()),
                    _ => Err(io::Error::last_os_error()),
                }
            });
            if let Ok(expired) = read {
                return expired;
            }
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Target {
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    addr: String,
    request: Vec<u8>,
}

/// Accepts any certificate and signature: the `conn` mode measures the server's handshake, and
/// the client's verification would only burn the load generator's core.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn fail(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

impl Target {
    fn new(url: &str, ca: Option<&str>, sni: &str, close: bool) -> io::Result<Target> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(fail(format!("bad url {url}")));
        };
        let (addr, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let connection = if close { "Connection: close\r\n" } else { "" };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tg-loadgen\r\n{connection}\r\n"
        );
        let tls = if tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| fail(e.to_string()))?;
            let mut cfg = match ca {
                Some(ca) => {
                    let mut roots = rustls::RootCertStore::empty();
                    let pem = std::fs::read(ca)?;
                    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                        roots.add(cert?).map_err(|e| fail(e.to_string()))?;
                    }
                    builder.with_root_certificates(roots).with_no_client_auth()
                }
                None => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                    .with_no_client_auth(),
            };
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
            if close {
                cfg.resumption = rustls::client::Resumption::disabled();
            }
            let name = rustls::pki_types::ServerName::try_from(sni.to_string())
                .map_err(|e| fail(e.to_string()))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        Ok(Target {
            tls,
            addr: addr.to_string(),
            request: request.into_bytes(),
        })
    }

    async fn connect(&self) -> io::Result<Client> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &self.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
            None => Box::new(tcp),
        };
        Ok(Client {
            io,
            buf: Vec::with_capacity(16 * 1024),
            closing: false,
        })
    }
}

struct Client {
    io: Box<dyn Io>,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// The server said `Connection: close`.
    closing: bool,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Client {
    async fn fill(&mut self, at_least: usize) -> io::Result<()> {
        let mut tmp = [0u8; 16 * 1024];
        while self.buf.len() < at_least {
            let n = self.io.read(&mut tmp).await?;
            if n == 0 {
                return Err(fail("connection closed by server"));
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
        Ok(())
    }

    async fn line(&mut self) -> io::Result<usize> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Ok(i);
            }
            let want = self.buf.len() + 1;
            self.fill(want).await?;
        }
    }

    /// Sends one request and reads the whole response; returns the status code.
    async fn get(&mut self, request: &[u8]) -> io::Result<u16> {
        self.io.write_all(request).await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let want = self.buf.len() + 1;
            self.fill(want).await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| fail("bad status line"))?;
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        self.closing = header("connection:").is_some_and(|v| v.contains("close"));
        let chunked = header("transfer-encoding:").is_some_and(|v| v.contains("chunked"));
        let length: Option<usize> = header("content-length:").and_then(|v| v.parse().ok());
        self.buf.drain(..head_end);
        if chunked {
            loop {
                let i = self.line().await?;
                let size_text = String::from_utf8_lossy(&self.buf[..i]).to_string();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| fail("bad chunk size"))?;
                self.buf.drain(..i + 2);
                if size == 0 {
                    let i = self.line().await?; // no trailers expected: the empty line
                    self.buf.drain(..i + 2);
                    break;
                }
                self.fill(size + 2).await?;
                self.buf.drain(..size + 2);
            }
        } else if let Some(n) = length {
            // Large bodies: consume as they come instead of buffering them whole.
            let mut left = n;
            loop {
                let take = left.min(self.buf.len());
                self.buf.drain(..take);
                left -= take;
                if left == 0 {
                    break;
                }
                self.fill(1).await?;
            }
        } else if status != 204 && status != 304 {
            return Err(fail("response without length"));
        }
        Ok(status)
    }
}

struct Args {
    mode: String,
    url: String,
    rate: f64,
    duration: f64,
    conns: usize,
    requests: usize,
    parallel: usize,
    hold: f64,
    ready_file: Option<String>,
    ca: Option<String>,
    sni: String,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it
        .next()
        .ok_or("usage: tg-loadgen rate|idle URL [options]")?;
    let url = it.next().ok_or("missing URL")?;
    let mut a = Args {
        mode,
        url,
        rate: 1000.0,
        duration: 10.0,
        conns: 50,
        requests: 1,
        parallel: 100,
        hold: 30.0,
        ready_file: None,
        ca: None,
        sni: "localhost".into(),
    };
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--rate" => a.rate = num(&v)?,
            "--duration" => a.duration = num(&v)?,
            "--conns" => a.conns = num(&v)? as usize,
            "--requests" => a.requests = num(&v)? as usize,
            "--parallel" => a.parallel = num(&v)? as usize,
            "--hold" => a.hold = num(&v)?,
            "--ready-file" => a.ready_file = Some(v),
            "--ca" => a.ca = Some(v),
            "--sni" => a.sni = v,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(a)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn rate(a: &Args, target: Arc<Target>) -> io::Result<()> {
    let conns = a.conns.max(1);
    let total = (a.rate * a.duration).round() as usize;
    // Connect everything and warm each connection with one request before the clock starts.
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut c = target.connect().await?;
        c.get(&target.request).await?;
        clients.push(c);
    }
    let t0 = Instant::now() + Duration::from_millis(20);
    let interval = 1.0 / a.rate;
    let local = tokio::task::LocalSet::new();
    let mut handles = Vec::new();
    for (k, mut client) in clients.into_iter().enumerate() {
        let target = target.clone();
        let pacer = Pacer::new()?;
        handles.push(local.spawn_local(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(total / conns + 1);
            let (mut errors, mut non2xx, mut late) = (0u64, 0u64, 0u64);
            let mut prev_done = t0;
            let mut idx = k;
            while idx < total {
                let due = t0 + Duration::from_secs_f64(idx as f64 * interval);
                if let Err(e) = pacer.sleep_until(due).await {
                    eprintln!("timerfd: {e}");
                    break;
                }
                let sent = Instant::now();
                // Late because the previous response on this connection came after the due
                // time: the server's delay, counted from the due time.
                let start = if prev_done > due {
                    late += 1;
                    due
                } else {
                    sent
                };
                match client.get(&target.request).await {
                    Ok(status) => {
                        let done = Instant::now();
                        lat.push((done - start).as_micros().min(u32::MAX as u128) as u32);
                        if !(200..400).contains(&status) {
                            non2xx += 1;
                        }
                        prev_done = done;
                        if client.closing {
                            match target.connect().await {
                                Ok(c) => client = c,
                                Err(_) => errors += 1,
                            }
                        }
                    }
                    Err(_) => {
                        errors += 1;
                        prev_done = Instant::now();
                        if let Ok(c) = target.connect().await {
                            client = c;
                        }
                    }
                }
                idx += conns;
            }
            (lat, errors, non2xx, late)
        }));
    }
    let results = local
        .run_until(async move {
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await);
            }
            out
        })
        .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let mut all = Vec::with_capacity(total);
    let (mut errors, mut non2xx, mut late) = (0, 0, 0);
    for r in results {
        let (lat, e, n, l) = r.map_err(|e| fail(e.to_string()))?;
        all.extend(lat);
        errors += e;
        non2xx += n;
        late += l;
    }
    all.sort_unstable();
    println!(
        "{{\"offered_rps\":{:.0},\"achieved_rps\":{:.1},\"requests\":{},\"errors\":{},\"non2xx\":{},\"late\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        a.rate,
        all.len() as f64 / elapsed,
        all.len(),
        errors,
        non2xx,
        late,
        percentile(&all, 50.0),
        percentile(&all, 90.0),
        percentile(&all, 99.0),
        percentile(&all, 99.9),
        all.last().copied().unwrap_or(0)
    );
    Ok(())
}

async fn conn(a: &Args, target: Arc<Target>) -> io::Result<()> {
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(a.duration);
    let local = tokio::task::LocalSet::new();
    let mut handles = Vec::new();
    for _ in 0..a.conns.max(1) {
        let target = target.clone();
        handles.push(local.spawn_local(async move {
            let (mut lat, mut errors, mut non2xx) = (Vec::<u32>::new(), 0u64, 0u64);
            while Instant::now() < end {
                let start = Instant::now();
                let result = async {
                    let mut c = target.connect().await?;
                    let status = c.get(&target.request).await?;
                    let _ = c.io.shutdown().await;
                    Ok::<u16, io::Error>(status)
                }
                .await;
                match result {
                    Ok(status) => {
                        lat.push(start.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        if !(200..400).contains(&status) {
                            non2xx += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, errors, non2xx)
        }));
    }
    let results = local
        .run_until(async move {
            let mut out = Vec::new();
            for h in handles {
                out.push(h.await);
            }
            out
        })
        .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let (mut all, mut errors, mut non2xx) = (Vec::new(), 0, 0);
    for r in results {
        let (lat, e, n) = r.map_err(|e| fail(e.to_string()))?;
        all.extend(lat);
        errors += e;
        non2xx += n;
    }
    all.sort_unstable();
    println!(
        "{{\"offered_rps\":0,\"achieved_rps\":{:.1},\"requests\":{},\"errors\":{},\"non2xx\":{},\"late\":0,\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        all.len() as f64 / elapsed,
        all.len(),
        errors,
        non2xx,
        percentile(&all, 50.0),
        percentile(&all, 90.0),
        percentile(&all, 99.0),
        percentile(&all, 99.9),
        all.last().copied().unwrap_or(0)
    );
    Ok(())
}

async fn idle(a: &Args, target: Arc<Target>) -> io::Result<()> {
    let mut held = Vec::with_capacity(a.conns);
    let mut failed = 0usize;
    let mut left = a.conns;
    while left > 0 {
        let batch = left.min(a.parallel.max(1));
        left -= batch;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let target = target.clone();
            let requests = a.requests;
            set.spawn(async move {
                let mut c = target.connect().await?;
                for _ in 0..requests {
                    c.get(&target.request).await?;
                }
                Ok::<Client, io::Error>(c)
            });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(c)) => held.push(c),
                _ => failed += 1,
            }
        }
    }
    eprintln!("idle: {} connections held, {failed} failed", held.len());
    if let Some(f) = &a.ready_file {
        std::fs::write(f, format!("{}\n", held.len()))?;
    }
    let until = Instant::now() + Duration::from_secs_f64(a.hold);
    let release = a.ready_file.as_ref().map(|f| format!("{f}.release"));
    while Instant::now() < until {
        if release
            .as_ref()
            .is_some_and(|r| std::path::Path::new(r).exists())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    Ok(())
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    // The pacing timers fire within 1 ns of their due time instead of the default 50 µs slack.
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        let close = a.mode == "conn";
        let target = Arc::new(Target::new(&a.url, a.ca.as_deref(), &a.sni, close)?);
        match a.mode.as_str() {
            "rate" => rate(&a, target).await,
            "conn" => conn(&a, target).await,
            "idle" => idle(&a, target).await,
            m => Err(fail(format!("unknown mode {m}"))),
        }
    });
    if let Err(e) = result {
        eprintln!("tg-loadgen: {e}");
        std::process::exit(1);
    }
}
