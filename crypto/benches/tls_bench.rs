//! `tls_bench`: the TLS proxy of `dpu_crypto::tls` against `stunnel4`
//! (Debian), side by side in one run, printing a table.
//!
//! Both proxies run as their own process, terminate TLS with the same
//! certificate (ECDSA P-256, issued by a throw-away CA) and forward to the
//! same plaintext upstream on loopback. The client (rustls, ring, in this
//! process) offers only TLS 1.3 `TLS_AES_128_GCM_SHA256` and X25519, so both
//! proxies negotiate exactly the same thing, and never resumes a session.
//!
//! - throughput: one connection sends `TLS_BENCH_BYTES` (1 GiB) through the
//!   proxy; the upstream counts it and answers one byte; MiB/s over the
//!   whole transfer, and the proxy process's CPU seconds (utime + stime from
//!   `/proc/PID/stat`) per GiB;
//! - handshakes: `TLS_BENCH_HANDSHAKES` (2000) new connections, 4 at a time,
//!   each a full handshake and a one-byte echo through to the upstream;
//!   handshakes/s, and the proxy's CPU milliseconds per handshake.
//!
//! Each measurement runs `TLS_BENCH_ROUNDS` (2) times per proxy, the two
//! proxies alternating; the best round of each is reported. Kernel TLS is
//! off for the comparison (stunnel4 does not use it); `TLS_BENCH_KTLS=1`
//! turns it on for our proxy where the kernel has the `tls` module.
//!
//! Run: `apt-get install stunnel4; cargo bench -p dpu-crypto --bench tls_bench`.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (CA PEM, server certificate PEM, server key PEM).
fn pki() -> Result<(String, String, String)> {
    let ca_key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "tls-bench ca");
    let ca = p.self_signed(&ca_key)?;
    let issuer = Issuer::new(p, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

/// `--serve LISTEN UPSTREAM CERT KEY`: our proxy as its own process, until
/// stdin closes.
fn serve(args: &[String]) -> Result<()> {
    use dpu_crypto::tls::{Limits, ListenerConfig, TlsProxy};
    let [listen, upstream, cert, key] = args else {
        return Err("--serve LISTEN UPSTREAM CERT KEY".into());
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let proxy = TlsProxy::start(&ListenerConfig {
            listen: listen.parse()?,
            upstream: upstream.parse()?,
            certificate_pem: std::fs::read_to_string(cert)?,
            private_key_pem: std::fs::read_to_string(key)?.into(),
            client_ca_pem: None,
            alpn: Vec::new(),
            limits: Limits::default(),
            ktls: std::env::var("TLS_BENCH_KTLS").is_ok_and(|v| v == "1"),
        })
        .await?;
        println!("ready {}", proxy.local_addr());
        // Exit when the parent closes our stdin.
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        proxy.shutdown().await;
        Ok(())
    })
}

/// The shared upstream: first byte `S` + u64 length → read that many bytes,
/// answer one; `E` → echo everything.
async fn upstream() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut op = [0u8; 1];
                if s.read_exact(&mut op).await.is_err() {
                    return;
                }
                if op[0] == b'S' {
                    let mut len = [0u8; 8];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut left = u64::from_be_bytes(len);
                    let mut buf = vec![0u8; 256 * 1024];
                    while left > 0 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => left = left.saturating_sub(n as u64),
                        }
                    }
                    let _ = s.write_all(b"k").await;
                } else {
                    let _ = s.write_all(&op).await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    Ok(addr)
}

/// A proxy process; killed and reaped on drop.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// utime + stime of the process, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) else {
            return f64::NAN;
        };
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return f64::NAN;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks / hz
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_listening(addr: SocketAddr) -> Result<()> {
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listens on {addr}").into())
}

fn start_ours(upstream: SocketAddr, dir: &Path) -> Result<Proc> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--serve")
        .arg("127.0.0.1:0")
        .arg(upstream.to_string())
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let addr = line
        .strip_prefix("ready ")
        .ok_or_else(|| format!("proxy did not start: {line:?}"))?
        .trim()
        .parse()?;
    Ok(Proc { child, addr })
}

fn start_stunnel(upstream: SocketAddr, dir: &Path) -> Result<Proc> {
    let port = free_port()?;
    let conf = dir.join("stunnel.conf");
    let mut f = std::fs::File::create(&conf)?;
    write!(
        f,
        "foreground = yes\npid =\ndebug = 0\n\
         socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n\
         [bench]\naccept = 127.0.0.1:{port}\nconnect = {upstream}\n\
         cert = {}\nkey = {}\nsslVersionMin = TLSv1.2\n",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )?;
    let child = Command::new("stunnel4")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("stunnel4 ({e}): apt-get install stunnel4"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let p = Proc { child, addr };
    wait_listening(addr)?;
    Ok(p)
}

fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

async fn connect(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost")?;
    Ok(tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(name, tcp)
        .await?)
}

/// (MiB/s, proxy CPU s per GiB).
async fn throughput(p: &Proc, cfg: &Arc<rustls::ClientConfig>, bytes: u64) -> Result<(f64, f64)> {
    let mut tls = connect(p.addr, cfg).await?;
    let chunk = vec![0x5au8; 64 * 1024];
    let cpu0 = p.cpu_seconds();
    let t0 = Instant::now();
    tls.write_all(b"S").await?;
    tls.write_all(&bytes.to_be_bytes()).await?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        tls.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    tls.flush().await?;
    let mut ack = [0u8; 1];
    tls.read_exact(&mut ack).await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = p.cpu_seconds() - cpu0;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    Ok((bytes as f64 / (1 << 20) as f64 / secs, cpu / gib))
}

/// (handshakes/s, proxy CPU ms per handshake).
async fn handshakes(p: &Proc, cfg: &Arc<rustls::ClientConfig>, n: u64) -> Result<(f64, f64)> {
    const PARALLEL: u64 = 4;
    let cpu0 = p.cpu_seconds();
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..PARALLEL {
        let cfg = cfg.clone();
        let addr = p.addr;
        let count = n / PARALLEL + u64::from(w < n % PARALLEL);
        tasks.spawn(async move {
            for _ in 0..count {
                let mut tls = connect(addr, &cfg).await?;
                tls.write_all(b"E").await?;
                let mut b = [0u8; 1];
                tls.read_exact(&mut b).await?;
                let _ = tls.shutdown().await;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = p.cpu_seconds() - cpu0;
    Ok((n as f64 / secs, cpu * 1000.0 / n as f64))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        return serve(&args[1..]);
    }
    let bytes = env_u64("TLS_BENCH_BYTES", 1 << 30);
    let n = env_u64("TLS_BENCH_HANDSHAKES", 2000);
    let rounds = env_u64("TLS_BENCH_ROUNDS", 2).max(1);
    let dir = tempfile::tempdir()?;
    let (ca, cert, key) = pki()?;
    std::fs::write(dir.path().join("cert.pem"), &cert)?;
    std::fs::write(dir.path().join("key.pem"), &key)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let up = upstream().await?;
        let cfg = client_config(&ca)?;
        let ours = start_ours(up, dir.path())?;
        let stunnel = start_stunnel(up, dir.path())?;
        // Warm-up: one session each, so both have loaded everything.
        for p in [&ours, &stunnel] {
            handshakes(p, &cfg, 4).await?;
        }
        let best = |a: (f64, f64), b: (f64, f64)| if b.0 > a.0 { b } else { a };
        let (mut tp_o, mut tp_s, mut hs_o, mut hs_s) = ((0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0));
        for r in 0..rounds {
            tp_o = best(tp_o, throughput(&ours, &cfg, bytes).await?);
            tp_s = best(tp_s, throughput(&stunnel, &cfg, bytes).await?);
            hs_o = best(hs_o, handshakes(&ours, &cfg, n).await?);
            hs_s = best(hs_s, handshakes(&stunnel, &cfg, n).await?);
            eprintln!("round {}/{rounds} done", r + 1);
        }
        let stunnel_version = Command::new("stunnel4")
            .arg("-version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .find(|l| l.starts_with("stunnel "))
                    .unwrap_or("stunnel4")
                    .to_string()
            })
            .unwrap_or_default();
        println!(
            "TLS 1.3 TLS_AES_128_GCM_SHA256, X25519, ECDSA P-256 certificate; {} MiB per transfer, {n} handshakes 4 at a time; best of {rounds}; baseline {stunnel_version}",
            bytes >> 20
        );
        println!();
        println!("| measure | dpu-crypto proxy | stunnel4 | ratio |");
        println!("|---|---:|---:|---:|");
        // (measure, ours, stunnel's, target of ours/stunnel: higher is
        // better for rates, lower for CPU cost; None: no target).
        let rows = [
            ("throughput, MiB/s", tp_o.0, tp_s.0, Some(1.0), true, 0),
            ("proxy CPU s per GiB (lower is better)", tp_o.1, tp_s.1, None, false, 2),
            ("new handshakes/s", hs_o.0, hs_s.0, Some(1.0), true, 0),
            ("proxy CPU ms per handshake (lower is better)", hs_o.1, hs_s.1, None, false, 2),
        ];
        for (measure, ours, base, _, _, digits) in rows {
            println!(
                "| {measure} | {ours:.digits$} | {base:.digits$} | {:.2}× |",
                ours / base
            );
        }
        // The same rows as `bench-row` lines for `scripts/bench.sh`.
        println!();
        for (measure, ours, base, target, higher, digits) in rows {
            let ratio = ours / base;
            let (target, verdict) = match target {
                Some(t) if higher => (format!("≥ {t:.1}× stunnel4"), if ratio >= t { "met" } else { "missed" }),
                Some(t) => (format!("≤ {t:.1}× stunnel4"), if ratio <= t { "met" } else { "missed" }),
                None => ("-".to_string(), "-"),
            };
            println!(
                "bench-row\tTLS proxy: {measure}\t{ours:.digits$}\t{base:.digits$} (stunnel4)\t{ratio:.2}×\t{target}\t{verdict}"
            );
        }
        Ok(())
    })
}
