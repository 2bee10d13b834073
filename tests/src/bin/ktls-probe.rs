//! `ktls-probe`: proves kernel TLS works in the running kernel, for the VM
//! rig (built static with musl and copied into the guest).
//!
//! Over a loopback TCP connection it attaches the `tls` ULP to both ends,
//! installs the same AES-GCM-128 TLS 1.2 key as the client's TX and the
//! server's RX state, and sends a message: it arrives intact only if the
//! kernel encrypted it into TLS records on one side and decrypted them on the
//! other. Prints one line per step; exits 1 with the failing step otherwise.
//! The key is a fixed test vector, never a secret.
//!
//! `ktls-probe proxy` runs dpu-crypto's TLS proxy with kernel TLS on
//! (`ktls: auto`) in front of a plaintext echo upstream on loopback, and a
//! rustls client through it, once with TLS 1.3 and once with TLS 1.2: each
//! session echoes 1 MiB end to end; while it is open the proxy's stats and
//! `/proc/net/tls_stat` are printed (`stats13 …`, `tls_stat_open13 …`), and
//! again after both closed (`stats_end …`, `tls_stat_end …`). The test
//! asserts on those lines: it is the kernel's counters, not the proxy's
//! word, that show the session went to kernel TLS.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;

const MESSAGE: &[u8] = b"hello through kernel TLS";

fn setsockopt<T>(
    sock: &TcpStream,
    level: i32,
    name: i32,
    value: &T,
    len: usize,
) -> std::io::Result<()> {
    // SAFETY: `value` points to `len` readable bytes for the whole call and the
    // fd is owned by `sock`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            len as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn attach_ulp(sock: &TcpStream) -> std::io::Result<()> {
    let ulp = *b"tls";
    setsockopt(sock, libc::SOL_TCP, libc::TCP_ULP, &ulp, ulp.len())
}

fn crypto_info() -> libc::tls12_crypto_info_aes_gcm_128 {
    libc::tls12_crypto_info_aes_gcm_128 {
        info: libc::tls_crypto_info {
            version: libc::TLS_1_2_VERSION,
            cipher_type: libc::TLS_CIPHER_AES_GCM_128,
        },
        iv: [1, 2, 3, 4, 5, 6, 7, 8],
        key: [0x42; 16],
        salt: [9, 10, 11, 12],
        rec_seq: [0; 8],
    }
}

fn set_key(sock: &TcpStream, direction: i32) -> std::io::Result<()> {
    let info = crypto_info();
    setsockopt(
        sock,
        libc::SOL_TLS,
        direction,
        &info,
        std::mem::size_of_val(&info),
    )
}

fn step<T>(what: &str, result: std::io::Result<T>) -> Result<T, String> {
    match result {
        Ok(v) => {
            println!("{what}: ok");
            Ok(v)
        }
        Err(e) => Err(format!("{what}: {e}")),
    }
}

fn probe() -> Result<(), String> {
    let listener = step("listen", TcpListener::bind("127.0.0.1:0"))?;
    let addr = step("local address", listener.local_addr())?;
    let mut client = step("connect", TcpStream::connect(addr))?;
    let (mut server, _) = step("accept", listener.accept())?;
    step("client setsockopt(TCP_ULP, \"tls\")", attach_ulp(&client))?;
    step("server setsockopt(TCP_ULP, \"tls\")", attach_ulp(&server))?;
    step("client TLS_TX aes-gcm-128", set_key(&client, libc::TLS_TX))?;
    step("server TLS_RX aes-gcm-128", set_key(&server, libc::TLS_RX))?;
    step("send", client.write_all(MESSAGE))?;
    let mut got = vec![0u8; MESSAGE.len()];
    step("receive", server.read_exact(&mut got))?;
    if got != MESSAGE {
        return Err(format!(
            "roundtrip: got {:?}",
            String::from_utf8_lossy(&got)
        ));
    }
    println!("roundtrip: {}", String::from_utf8_lossy(&got));
    Ok(())
}

fn tls_stat() -> String {
    let Ok(text) = std::fs::read_to_string("/proc/net/tls_stat") else {
        return "unreadable".into();
    };
    text.split_whitespace()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|kv| kv.join("="))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One counter of `/proc/net/tls_stat`.
fn tls_counter(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/tls_stat").ok()?;
    let mut words = text.split_whitespace();
    while let Some(key) = words.next() {
        let value = words.next()?;
        if key == name {
            return value.parse().ok();
        }
    }
    None
}

fn print_stats(tag: &str, s: &dpu_crypto::tls::ProxyStats) {
    println!(
        "{tag} ktls_active={} ktls_sessions={} ktls_failures={} connections={} handshake_failures={} reason={:?}",
        s.ktls_active,
        s.ktls_sessions,
        s.ktls_failures,
        s.connections,
        s.handshake_failures,
        s.ktls_reason
    );
}

async fn proxy_session(
    proxy: &dpu_crypto::tls::TlsProxy,
    ca_pem: &str,
    version: &'static rustls::SupportedProtocolVersion,
    tag: &str,
) -> Result<(), String> {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| format!("ca pem: {e}"))?)
            .map_err(|e| format!("ca: {e}"))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{tag} handshake: {e}"))?;
    // 1 MiB of a pattern, echoed back while it is being written.
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(&mut tls);
    let sent = data.clone();
    let (wrote, got) = tokio::join!(
        async move {
            w.write_all(&sent).await?;
            w.flush().await?;
            Ok::<_, std::io::Error>(w)
        },
        async {
            let mut got = vec![0u8; data.len()];
            r.read_exact(&mut got).await.map(|_| got)
        }
    );
    wrote.map_err(|e| format!("{tag} write: {e}"))?;
    let got = got.map_err(|e| format!("{tag} read: {e}"))?;
    if got != data {
        return Err(format!("{tag}: echo differs"));
    }
    println!("{tag} ECHO_OK bytes={}", got.len());
    print_stats(&format!("stats{tag}"), &proxy.stats());
    println!("tls_stat_open{tag} {}", tls_stat());
    tls.shutdown()
        .await
        .map_err(|e| format!("{tag} close: {e}"))?;
    Ok(())
}

async fn proxy() -> Result<(), String> {
    use dpu_crypto::tls::{KtlsSupport, Limits, ListenerConfig, TlsProxy};
    println!("kernel {:?}", KtlsSupport::probe());
    println!("tls_stat_start {}", tls_stat());
    let ca = dpu_pki::Ca::generate("ktls probe ca").map_err(|e| e.to_string())?;
    let id = ca
        .issue("spiffe://dpu.local/ktls-probe", &["localhost"])
        .map_err(|e| e.to_string())?;
    let up = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("upstream: {e}"))?;
    let upstream = up.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = up.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let proxy = TlsProxy::start(&ListenerConfig {
        listen: "127.0.0.1:0".parse().map_err(|_| "addr")?,
        upstream,
        certificate_pem: id.cert_pem.clone(),
        private_key_pem: id.key_pem.clone().into(),
        client_ca_pem: None,
        alpn: Vec::new(),
        limits: Limits::default(),
        ktls: true,
    })
    .await
    .map_err(|e| format!("proxy: {e}"))?;
    print_stats("stats_start", &proxy.stats());
    proxy_session(&proxy, &ca.cert_pem, &rustls::version::TLS13, "13").await?;
    proxy_session(&proxy, &ca.cert_pem, &rustls::version::TLS12, "12").await?;
    // Let the proxy see both closes, and the kernel release their TLS state:
    // bounded, so a session that never closes still shows in `tls_stat_end`.
    for _ in 0..50 {
        if proxy.stats().active == 0
            && tls_counter("TlsCurrTxSw") == Some(0)
            && tls_counter("TlsCurrRxSw") == Some(0)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    print_stats("stats_end", &proxy.stats());
    println!("tls_stat_end {}", tls_stat());
    proxy.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let result = if std::env::args().nth(1).as_deref() == Some("proxy") {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(proxy()),
            Err(e) => Err(format!("runtime: {e}")),
        }
    } else {
        probe()
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ktls-probe failed at {e}");
            ExitCode::FAILURE
        }
    }
}
