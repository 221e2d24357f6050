//! IMAP load generator for postern's benchmarks (see bench/run.sh, BENCHMARKS.md).
//!
//!   loadgen HOST:PORT FIGURE [--option value ...] [--tls]
//!
//! Figures, each printed as one line `FIGURE key=value ...`:
//!   logins        --creds FILE --clients C --seconds T --kind warm|cold
//!                 connect, LOGIN, LOGOUT in a loop on C clients for T seconds; warm
//!                 cycles through the file, cold uses each line at most once (stops
//!                 early when the file is used up).
//!   fetch         --creds FILE --connections N --seconds T [--min-size BYTES]
//!                 every connection logs in (first line of FILE), EXAMINEs INBOX,
//!                 finds the message LARGER than --min-size and FETCHes BODY.PEEK[]
//!                 in a loop; MB/s = message bytes received / elapsed (MB = 10^6 B).
//!   idle          --creds FILE --sessions N [--hold S] [--ready-file F] [--release-file F]
//!                 opens N logged-in sessions, writes F when they are up, holds
//!                 them until --release-file exists or S seconds pass, then NOOPs
//!                 every one: errors = failed opens + failed NOOPs.
//!   latency       --creds FILE --count K
//!                 K sequential logins, each on a new connection: time from sending
//!                 LOGIN to its tagged OK, p50/p99/max (and connect+greeting+LOGIN).
//!   kill-latency  --creds FILE --sessions N --command CMD [--wait-secs W]
//!                 opens N logged-in sessions, runs `sh -c CMD`, then measures from
//!                 the command returning until each socket is closed by the server.
//!   storm         --creds FILE [--count N] [--spread-ms S]
//!                 a restart storm: one device per line (the first N), all launched
//!                 at once (or device i at i*S/N ms: arrivals spread evenly over S
//!                 ms), each connects, LOGINs, LOGOUTs. Latency = connect start
//!                 to LOGIN's tagged OK (what the device waits); peak_open = most
//!                 connections established and not yet closed at one moment.
//!                 refused = connects that failed, unavailable = NO [UNAVAILABLE].
//!
//! Common options: --tls (implicit TLS, certificate verification off), --timeout S
//! (per network step, default 30), --parallel-open P (connects in flight while opening
//! sessions, default 100). Credentials files: `user<TAB>password` per line.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, Error>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn err<T>(msg: impl Into<String>) -> Res<T> {
    Err(msg.into().into())
}

// ---------------------------------------------------------------- options

struct Args {
    addr: String,
    figure: String,
    opts: HashMap<String, String>,
    tls: bool,
}

impl Args {
    fn parse() -> Res<Args> {
        let mut it = std::env::args().skip(1);
        let addr = it
            .next()
            .ok_or("usage: loadgen HOST:PORT FIGURE [--opt value] [--tls]")?;
        let figure = it.next().ok_or("missing FIGURE")?;
        let mut opts = HashMap::new();
        let mut tls = false;
        while let Some(a) = it.next() {
            let Some(key) = a.strip_prefix("--") else {
                return err(format!("unexpected argument {a}"));
            };
            if key == "tls" {
                tls = true;
                continue;
            }
            let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
            opts.insert(key.to_string(), v);
        }
        Ok(Args {
            addr,
            figure,
            opts,
            tls,
        })
    }
    fn get<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> Res<T> {
        match self.opts.get(key) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("bad value for --{key}: {v}").into()),
            None => default.ok_or_else(|| format!("--{key} is required").into()),
        }
    }
    fn str(&self, key: &str) -> Res<String> {
        self.opts
            .get(key)
            .cloned()
            .ok_or_else(|| format!("--{key} is required").into())
    }
}

// ---------------------------------------------------------------- connections

#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

struct Target {
    addr: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl Target {
    fn new(args: &Args) -> Res<Target> {
        let tls = if args.tls {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth();
            let host = args
                .addr
                .rsplit_once(':')
                .map_or(args.addr.as_str(), |(h, _)| h);
            let name = ServerName::try_from(host.to_string())?;
            Some((TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        Ok(Target {
            addr: args.addr.clone(),
            tls,
            timeout: Duration::from_secs(args.get("timeout", Some(30))?),
        })
    }
}

struct Conn {
    io: BufReader<Box<dyn Io>>,
    tag: u64,
    timeout: Duration,
    line: Vec<u8>,
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// `{N}` at the end of a response line (CRLF stripped): a literal of N bytes follows.
fn literal_len(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&l[open + 1..])
        .ok()?
        .trim_end_matches('+')
        .parse()
        .ok()
}

impl Conn {
    async fn open(t: &Target, bufsize: usize) -> Res<Conn> {
        let fut = async {
            let tcp = TcpStream::connect(&t.addr).await?;
            tcp.set_nodelay(true)?;
            let io: Box<dyn Io> = match &t.tls {
                Some((c, name)) => Box::new(c.connect(name.clone(), tcp).await?),
                None => Box::new(tcp),
            };
            Ok::<_, Error>(io)
        };
        let io = tokio::time::timeout(t.timeout, fut)
            .await
            .map_err(|_| "connect timed out")??;
        let mut c = Conn {
            io: BufReader::with_capacity(bufsize, io),
            tag: 0,
            timeout: t.timeout,
            line: Vec::new(),
        };
        c.read_line().await?;
        if !c.line.starts_with(b"* OK") {
            return err(format!(
                "greeting: {}",
                String::from_utf8_lossy(&c.line).trim_end()
            ));
        }
        Ok(c)
    }

    async fn read_line(&mut self) -> Res<()> {
        self.line.clear();
        let n = tokio::time::timeout(self.timeout, self.io.read_until(b'\n', &mut self.line))
            .await
            .map_err(|_| "read timed out")??;
        if n == 0 {
            return err("connection closed by the server");
        }
        Ok(())
    }

    /// Sends one command; returns the untagged lines (literals skipped) and the
    /// literal bytes received. Fails unless the tagged reply is OK.
    async fn command(&mut self, cmd: &str) -> Res<(Vec<String>, u64)> {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        let wire = format!("{tag} {cmd}\r\n");
        tokio::time::timeout(self.timeout, async {
            self.io.get_mut().write_all(wire.as_bytes()).await?;
            self.io.get_mut().flush().await
        })
        .await
        .map_err(|_| "write timed out")??;
        let mut untagged = Vec::new();
        let mut literal_bytes = 0u64;
        let mut scratch = Vec::new();
        loop {
            self.read_line().await?;
            let body = self.line.strip_suffix(b"\r\n").unwrap_or(&self.line);
            if let Some(n) = literal_len(body) {
                scratch.resize(64 * 1024, 0);
                let mut left = n;
                while left > 0 {
                    let want = left.min(scratch.len());
                    tokio::time::timeout(self.timeout, self.io.read_exact(&mut scratch[..want]))
                        .await
                        .map_err(|_| "literal read timed out")??;
                    left -= want;
                }
                literal_bytes += n as u64;
                continue;
            }
            let text = String::from_utf8_lossy(body).into_owned();
            if let Some(rest) = text.strip_prefix(&tag).and_then(|r| r.strip_prefix(' ')) {
                if rest.starts_with("OK") {
                    return Ok((untagged, literal_bytes));
                }
                return err(format!("{}: {rest}", cmd.split(' ').next().unwrap_or("")));
            }
            untagged.push(text);
        }
    }

    async fn login(&mut self, user: &str, pass: &str) -> Res<()> {
        self.command(&format!("LOGIN {} {}", quote(user), quote(pass)))
            .await
            .map(|_| ())
    }

    async fn logout(&mut self) -> Res<()> {
        self.command("LOGOUT").await.map(|_| ())
    }
}

// ---------------------------------------------------------------- helpers

fn read_creds(path: &str) -> Res<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let creds: Vec<_> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once('\t').or_else(|| l.split_once(' ')))
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .collect();
    if creds.is_empty() {
        return err(format!("{path}: no user<TAB>password lines"));
    }
    Ok(creds)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Keeps the first few error messages, counted by text.
#[derive(Default)]
struct Errors(std::sync::Mutex<Vec<(String, u64)>>);

impl Errors {
    fn add(&self, e: &Error) {
        let msg = e.to_string();
        let mut v = self.0.lock().unwrap();
        if let Some(entry) = v.iter_mut().find(|(m, _)| *m == msg) {
            entry.1 += 1;
        } else if v.len() < 5 {
            v.push((msg, 1));
        }
    }
    fn report(&self) {
        for (m, n) in self.0.lock().unwrap().iter() {
            eprintln!("loadgen: error x{n}: {m}");
        }
    }
}

/// Opens `creds.len()`-cycled logged-in sessions, at most `parallel` connects in flight.
async fn open_sessions(
    t: &Arc<Target>,
    creds: &Arc<Vec<(String, String)>>,
    n: usize,
    parallel: usize,
    errors: &Arc<Errors>,
) -> Vec<Conn> {
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (t, creds, sem, errors) = (t.clone(), creds.clone(), sem.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let (u, p) = &creds[i % creds.len()];
            let r = async {
                let mut c = Conn::open(&t, 1024).await?;
                c.login(u, p).await?;
                Ok::<_, Error>(c)
            }
            .await;
            r.map_err(|e| errors.add(&e)).ok()
        }));
    }
    let mut conns = Vec::with_capacity(n);
    for task in tasks {
        if let Ok(Some(c)) = task.await {
            conns.push(c);
        }
    }
    conns
}

// ---------------------------------------------------------------- figures

async fn logins(args: &Args, t: Arc<Target>) -> Res<()> {
    let creds = Arc::new(read_creds(&args.str("creds")?)?);
    let clients: usize = args.get("clients", Some(4))?;
    let seconds: f64 = args.get("seconds", Some(5.0))?;
    let kind = args.str("kind").unwrap_or_else(|_| "warm".into());
    let cold = match kind.as_str() {
        "warm" => false,
        "cold" => true,
        _ => return err("--kind is warm or cold"),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (t, creds, next, ok, bad, errors) = (
            t.clone(),
            creds.clone(),
            next.clone(),
            ok.clone(),
            bad.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if cold && i >= creds.len() {
                    break;
                }
                let (u, p) = &creds[i % creds.len()];
                let r = async {
                    let mut c = Conn::open(&t, 4096).await?;
                    c.login(u, p).await?;
                    c.logout().await
                }
                .await;
                match r {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.add(&e);
                        bad.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    errors.report();
    println!(
        "logins kind={kind} clients={clients} seconds={seconds} ok={ok} errors={} elapsed={elapsed:.2} rate={:.1}",
        bad.load(Ordering::Relaxed),
        ok as f64 / elapsed
    );
    Ok(())
}

async fn fetch(args: &Args, t: Arc<Target>) -> Res<()> {
    let creds = read_creds(&args.str("creds")?)?;
    let (user, pass) = creds[0].clone();
    let n: usize = args.get("connections", Some(1))?;
    let seconds: f64 = args.get("seconds", Some(5.0))?;
    let min_size: u64 = args.get("min-size", Some(1_000_000))?;
    let errors = Arc::new(Errors::default());
    // Log in and select everywhere first; then start the clock for everyone at once.
    let mut conns = Vec::new();
    let mut seqs = Vec::new();
    for _ in 0..n {
        let mut c = Conn::open(&t, 256 * 1024).await?;
        c.login(&user, &pass).await?;
        c.command("EXAMINE INBOX").await?;
        let (lines, _) = c.command(&format!("SEARCH LARGER {min_size}")).await?;
        let seq = lines
            .iter()
            .find_map(|l| l.strip_prefix("* SEARCH "))
            .and_then(|s| s.split(' ').next())
            .ok_or("no message larger than --min-size in INBOX")?
            .to_string();
        conns.push(c);
        seqs.push(seq);
    }
    let bytes = Arc::new(AtomicU64::new(0));
    let fetches = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for (mut c, seq) in conns.into_iter().zip(seqs) {
        let (bytes, fetches, errors) = (bytes.clone(), fetches.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut bad = 0u64;
            while Instant::now() < deadline {
                match c.command(&format!("FETCH {seq} BODY.PEEK[]")).await {
                    Ok((_, b)) => {
                        bytes.fetch_add(b, Ordering::Relaxed);
                        fetches.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.add(&e);
                        bad += 1;
                        break;
                    }
                }
            }
            let _ = c.logout().await;
            bad
        }));
    }
    let mut bad = 0;
    for task in tasks {
        bad += task.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let b = bytes.load(Ordering::Relaxed);
    errors.report();
    println!(
        "fetch connections={n} seconds={seconds} fetches={} bytes={b} errors={bad} elapsed={elapsed:.2} mbps={:.1}",
        fetches.load(Ordering::Relaxed),
        b as f64 / 1e6 / elapsed
    );
    Ok(())
}

async fn idle(args: &Args, t: Arc<Target>) -> Res<()> {
    let creds = Arc::new(read_creds(&args.str("creds")?)?);
    let n: usize = args.get("sessions", Some(100))?;
    let hold: f64 = args.get("hold", Some(10.0))?;
    let parallel: usize = args.get("parallel-open", Some(100))?;
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let conns = open_sessions(&t, &creds, n, parallel, &errors).await;
    let open_secs = start.elapsed().as_secs_f64();
    let opened = conns.len();
    if let Some(f) = args.opts.get("ready-file") {
        std::fs::write(f, format!("{opened}\n"))?;
    }
    let release = args.opts.get("release-file").cloned();
    let hold_until = Instant::now() + Duration::from_secs_f64(hold);
    while Instant::now() < hold_until {
        if release
            .as_deref()
            .is_some_and(|f| std::path::Path::new(f).exists())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every held session must still answer.
    let mut tasks = Vec::new();
    for mut c in conns {
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let r = async {
                c.command("NOOP").await?;
                c.logout().await
            }
            .await;
            r.map_err(|e| errors.add(&e)).is_err()
        }));
    }
    let mut check_errors = 0;
    for task in tasks {
        if task.await? {
            check_errors += 1;
        }
    }
    errors.report();
    println!(
        "idle sessions={n} tls={} opened={opened} open_errors={} check_errors={check_errors} errors={} open_secs={open_secs:.2}",
        args.tls,
        n - opened,
        n - opened + check_errors
    );
    Ok(())
}

async fn latency(args: &Args, t: Arc<Target>) -> Res<()> {
    let creds = read_creds(&args.str("creds")?)?;
    let k: usize = args.get("count", Some(100))?;
    let errors = Errors::default();
    let mut login = Vec::with_capacity(k);
    let mut total = Vec::with_capacity(k);
    for i in 0..k {
        let (u, p) = &creds[i % creds.len()];
        let r = async {
            let t0 = Instant::now();
            let mut c = Conn::open(&t, 4096).await?;
            let t1 = Instant::now();
            c.login(u, p).await?;
            let t2 = Instant::now();
            c.logout().await?;
            Ok::<_, Error>((ms(t2 - t1), ms(t2 - t0)))
        }
        .await;
        match r {
            Ok((l, a)) => {
                login.push(l);
                total.push(a);
            }
            Err(e) => errors.add(&e),
        }
    }
    login.sort_by(f64::total_cmp);
    total.sort_by(f64::total_cmp);
    errors.report();
    println!(
        "latency count={k} errors={} login_p50_ms={:.3} login_p99_ms={:.3} login_max_ms={:.3} connect_login_p50_ms={:.3} connect_login_p99_ms={:.3}",
        k - login.len(),
        pct(&login, 0.5),
        pct(&login, 0.99),
        login.last().copied().unwrap_or(f64::NAN),
        pct(&total, 0.5),
        pct(&total, 0.99)
    );
    Ok(())
}

async fn kill_latency(args: &Args, t: Arc<Target>) -> Res<()> {
    let creds = Arc::new(read_creds(&args.str("creds")?)?);
    let n: usize = args.get("sessions", Some(100))?;
    let command = args.str("command")?;
    let wait: f64 = args.get("wait-secs", Some(30.0))?;
    let parallel: usize = args.get("parallel-open", Some(100))?;
    let errors = Arc::new(Errors::default());
    let conns = open_sessions(&t, &creds, n, parallel, &errors).await;
    let opened = conns.len();
    // Each session waits for the server to close it; records when, and whether `* BYE` came.
    let mut tasks = Vec::new();
    for mut c in conns {
        tasks.push(tokio::spawn(async move {
            let mut bye = false;
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match c.io.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => return (Instant::now(), bye),
                    Ok(_) => bye |= buf.starts_with(b"* BYE"),
                }
            }
        }));
    }
    let cmd_start = Instant::now();
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .status()
        .await?;
    let t0 = Instant::now();
    if !status.success() {
        eprintln!("loadgen: command exited with {status}");
    }
    let deadline = t0 + Duration::from_secs_f64(wait);
    let mut lat = Vec::with_capacity(opened);
    let (mut byes, mut early, mut not_closed) = (0, 0, 0);
    for mut task in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, &mut task).await {
            Ok(Ok((at, bye))) => {
                if at < t0 {
                    early += 1;
                }
                byes += bye as usize;
                lat.push(ms(at.saturating_duration_since(t0)));
            }
            _ => {
                task.abort();
                not_closed += 1;
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    errors.report();
    println!(
        "kill-latency sessions={n} opened={opened} closed={} bye={byes} closed_before_return={early} not_closed={not_closed} command_secs={:.3} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        lat.len(),
        (t0 - cmd_start).as_secs_f64(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

async fn storm(args: &Args, t: Arc<Target>) -> Res<()> {
    let creds = read_creds(&args.str("creds")?)?;
    let n: usize = args.get("count", Some(creds.len()))?.min(creds.len());
    let spread_ms: f64 = args.get("spread-ms", Some(0.0))?;
    let errors = Arc::new(Errors::default());
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let unavailable = Arc::new(AtomicUsize::new(0));
    // Every task is spawned before any runs far: the runtime's threads pick them up
    // while this loop goes on, so the connects all start within a few milliseconds.
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, (u, p)) in creds.into_iter().take(n).enumerate() {
        let (t, errors, open, peak, refused, unavailable) = (
            t.clone(),
            errors.clone(),
            open.clone(),
            peak.clone(),
            refused.clone(),
            unavailable.clone(),
        );
        let due = start + Duration::from_secs_f64(spread_ms / 1000.0 * i as f64 / n as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            let t0 = Instant::now();
            let mut c = match Conn::open(&t, 1024).await {
                Ok(c) => c,
                Err(e) => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    errors.add(&e);
                    return None;
                }
            };
            let now_open = open.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(now_open, Ordering::Relaxed);
            let r = async {
                c.login(&u, &p).await?;
                let at = Instant::now();
                c.logout().await?;
                Ok::<_, Error>(ms(at - t0))
            }
            .await;
            drop(c);
            open.fetch_sub(1, Ordering::Relaxed);
            match r {
                Ok(l) => Some(l),
                Err(e) => {
                    if e.to_string().contains("[UNAVAILABLE]") {
                        unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    errors.add(&e);
                    None
                }
            }
        }));
    }
    let spawn_ms = ms(start.elapsed());
    let mut lat = Vec::with_capacity(n);
    for task in tasks {
        if let Some(l) = task.await? {
            lat.push(l);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    errors.report();
    println!(
        "storm devices={n} spread_ms={spread_ms} ok={} errors={} refused={} unavailable={} peak_open={} spawn_ms={spawn_ms:.1} elapsed={elapsed:.2} p50_ms={:.1} p99_ms={:.1} max_ms={:.1}",
        lat.len(),
        n - lat.len(),
        refused.load(Ordering::Relaxed),
        unavailable.load(Ordering::Relaxed),
        peak.load(Ordering::Relaxed),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

#[tokio::main]
async fn main() {
    let r = async {
        let args = Args::parse()?;
        let t = Arc::new(Target::new(&args)?);
        match args.figure.as_str() {
            "logins" => logins(&args, t).await,
            "fetch" => fetch(&args, t).await,
            "idle" => idle(&args, t).await,
            "latency" => latency(&args, t).await,
            "kill-latency" => kill_latency(&args, t).await,
            "storm" => storm(&args, t).await,
            f => err(format!("unknown figure {f}")),
        }
    }
    .await;
    if let Err(e) = r {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
