//! The TLS proxy end to end on loopback: a rustls client → the proxy → a
//! plaintext echo upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dpu_crypto::tls::{KtlsSupport, Limits, ListenerConfig, TlsProxy};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use zeroize::Zeroizing;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// (certificate PEM, key PEM) issued by `ca`.
fn leaf(ca: &Ca, cn: &str, server: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(if server {
        vec!["localhost".to_string()]
    } else {
        vec![]
    })
    .unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

async fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn listener(
    upstream: SocketAddr,
    server: &(String, String),
    client_ca: Option<&Ca>,
    alpn: &[&str],
) -> ListenerConfig {
    ListenerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream,
        certificate_pem: server.0.clone(),
        private_key_pem: Zeroizing::new(server.1.clone()),
        client_ca_pem: client_ca.map(|c| c.pem.clone()),
        alpn: alpn.iter().map(|s| s.to_string()).collect(),
        limits: Limits::default(),
        ktls: true,
    }
}

fn der_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

fn connector(trust: &Ca, client: Option<&(String, String)>, alpn: &[&str]) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in der_certs(&trust.pem) {
        roots.add(c).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => {
            let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key.as_bytes())
                .unwrap()
                .unwrap();
            b.with_client_auth_cert(der_certs(cert), key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    TlsConnector::from(Arc::new(cfg))
}

async fn echo_once<S: AsyncReadExt + AsyncWriteExt + Unpin>(s: &mut S, msg: &[u8]) -> Vec<u8> {
    s.write_all(msg).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .unwrap();
    buf
}

#[tokio::test]
async fn terminates_tls_forwards_plaintext_and_negotiates_alpn() {
    let upstream = echo_upstream().await;
    let ca = ca("server ca");
    let server = leaf(&ca, "localhost", true);
    let proxy = TlsProxy::start(&listener(upstream, &server, None, &["h2", "http/1.1"]))
        .await
        .unwrap();
    let tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut tls = connector(&ca, None, &["http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        echo_once(&mut tls, b"hello through the DPU").await,
        b"hello through the DPU"
    );
    let s = proxy.stats();
    assert_eq!(s.connections, 1);
    assert_eq!(s.active, 1);
    // Kernel TLS where the kernel has it (the VM test proves the hand-off),
    // rustls with the reason where it does not (this sandbox's kernel).
    let kernel = KtlsSupport::probe();
    assert_eq!(s.ktls_active, kernel.any(), "{s:?} {kernel:?}");
    assert_eq!(s.ktls_sessions, u64::from(kernel.any()), "{s:?}");
    // The session went to the kernel or, kTLS being wanted, is counted as
    // a fallback to userspace; the handle reads the same counters.
    assert_eq!(s.ktls_sessions + s.ktls_fallbacks, 1, "{s:?}");
    assert_eq!(proxy.stats_handle().stats(), s);
    assert!(!s.ktls_reason.is_empty());
    drop(tls);
    proxy.shutdown().await;
}

#[tokio::test]
async fn client_certificate_required_when_a_client_ca_is_set() {
    let upstream = echo_upstream().await;
    let server_ca = ca("server ca");
    let client_ca = ca("client ca");
    let server = leaf(&server_ca, "localhost", true);
    let proxy = TlsProxy::start(&listener(upstream, &server, Some(&client_ca), &[]))
        .await
        .unwrap();

    // With a certificate from the client CA: served.
    let good = leaf(&client_ca, "tenant-app", false);
    let tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut tls = connector(&server_ca, Some(&good), &[])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(echo_once(&mut tls, b"ping").await, b"ping");

    // Without one: refused. In TLS 1.3 the client may finish its side of the
    // handshake first; the refusal then arrives on the first read.
    for client in [None, Some(leaf(&server_ca, "wrong-ca", false))] {
        let tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
        let refused = match connector(&server_ca, client.as_ref(), &[])
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
        {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s.write_all(b"ping").await;
                let mut buf = [0u8; 4];
                !matches!(
                    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
                    Ok(Ok(_))
                )
            }
        };
        assert!(refused);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = proxy.stats();
    assert_eq!(s.handshake_failures, 2, "{s:?}");
    assert_eq!(s.connections, 1, "{s:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn rotation_keeps_established_connections() {
    let upstream = echo_upstream().await;
    let old_ca = ca("old ca");
    let new_ca = ca("new ca");
    let old = leaf(&old_ca, "localhost", true);
    let new = leaf(&new_ca, "localhost", true);
    let proxy = TlsProxy::start(&listener(upstream, &old, None, &[]))
        .await
        .unwrap();

    let tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut before = connector(&old_ca, None, &[])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(echo_once(&mut before, b"one").await, b"one");

    proxy.reload(&listener(upstream, &new, None, &[])).unwrap();

    // The established connection goes on, on the old certificate.
    assert_eq!(echo_once(&mut before, b"two").await, b"two");
    // New connections get the new certificate: the old trust fails...
    let tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert!(
        connector(&old_ca, None, &[])
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .is_err()
    );
    // ...the new one works.
    let tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut after = connector(&new_ca, None, &[])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(echo_once(&mut after, b"three").await, b"three");
    assert_eq!(echo_once(&mut before, b"four").await, b"four");
    proxy.shutdown().await;
}

#[tokio::test]
async fn connection_limit_and_handshake_timeout() {
    let upstream = echo_upstream().await;
    let ca = ca("ca");
    let server = leaf(&ca, "localhost", true);
    let mut cfg = listener(upstream, &server, None, &[]);
    cfg.limits = Limits {
        max_connections: 1,
        handshake_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(1),
    };
    let proxy = TlsProxy::start(&cfg).await.unwrap();
    // A silent client holds the only slot until its handshake times out.
    let _silent = TcpStream::connect(proxy.local_addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(2), second.read(&mut buf))
        .await
        .expect("over-limit connection is closed");
    assert!(matches!(n, Ok(0) | Err(_)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = proxy.stats();
    assert_eq!(s.refused_over_limit, 1, "{s:?}");
    assert_eq!(s.handshake_failures, 1, "{s:?}");
    // The slot is free again.
    let tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut tls = connector(&ca, None, &[])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(echo_once(&mut tls, b"ok").await, b"ok");
    proxy.shutdown().await;
}

#[tokio::test]
async fn bad_pem_and_mismatched_key_name_the_field_without_the_key() {
    let ca = ca("ca");
    let server = leaf(&ca, "localhost", true);
    let other = leaf(&ca, "localhost", true);
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut cfg = listener(upstream, &server, None, &[]);
    cfg.certificate_pem = "not a pem".into();
    let e = TlsProxy::start(&cfg).await.unwrap_err();
    assert_eq!(e.field(), "spec.certificate_pem");
    let mut cfg = listener(upstream, &server, None, &[]);
    cfg.private_key_pem = Zeroizing::new(other.1.clone());
    let e = TlsProxy::start(&cfg).await.unwrap_err();
    assert_eq!(e.field(), "spec.private_key_pem");
    let text = format!("{e} {e:?} {cfg:?}");
    let key_body = other.1.lines().nth(1).unwrap();
    assert!(!text.contains(key_body), "{text}");
}

#[tokio::test]
async fn ktls_off_stays_in_userspace_and_says_so() {
    let upstream = echo_upstream().await;
    let ca = ca("server ca");
    let server = leaf(&ca, "localhost", true);
    let mut cfg = listener(upstream, &server, None, &[]);
    cfg.ktls = false;
    let proxy = TlsProxy::start(&cfg).await.unwrap();
    let tcp = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut tls = connector(&ca, None, &[])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(echo_once(&mut tls, b"plain rustls").await, b"plain rustls");
    let s = proxy.stats();
    assert!(!s.ktls_active, "{s:?}");
    assert_eq!(s.ktls_sessions, 0);
    assert_eq!(s.ktls_reason, "spec.ktls is off");
    assert_eq!(s.ktls_fallbacks, 0, "kTLS was not asked for: {s:?}");
    drop(tls);
    proxy.shutdown().await;
}

/// Root only. `start_in`: the listener is bound and the upstream dialled
/// inside another namespace. From inside it the proxy relays to an upstream
/// there; an upstream on the caller's loopback (same address and port as
/// seen from here) is not reached: the client gets nothing and the proxy
/// counts an upstream failure.
#[tokio::test]
async fn start_in_binds_and_dials_inside_the_namespace_only() {
    use dpu_crypto::netns::NetnsThread;
    // A missing environment fails the test; it never passes unrun.
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "needs root for namespaces: run the tests as root (scripts/test.sh does)"
    );
    let ns_file = std::thread::spawn(|| {
        // SAFETY: unshare affects only this short-lived thread.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        std::fs::File::open("/proc/thread-self/ns/net").unwrap()
    })
    .join()
    .unwrap();
    let ns = Arc::new(NetnsThread::spawn("tls-test", ns_file).unwrap());
    // lo up in the new namespace (`ip` as a tool, entering through the
    // namespace thread's /proc entry).
    let tid = ns
        .run_blocking(|| {
            // SAFETY: gettid has no preconditions.
            unsafe { libc::gettid() }
        })
        .unwrap();
    assert!(
        std::process::Command::new("nsenter")
            .arg(format!(
                "--net=/proc/{}/task/{tid}/ns/net",
                std::process::id()
            ))
            .args(["ip", "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    );
    let outside = echo_upstream().await;
    let inside = ns
        .tcp_listener("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let inside_addr = inside.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = inside.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let ca = ca("server ca");
    let server = leaf(&ca, "localhost", true);
    let proxy = TlsProxy::start_in(&listener(inside_addr, &server, None, &[]), Some(ns.clone()))
        .await
        .unwrap();
    // Not listening here.
    assert!(TcpStream::connect(proxy.local_addr()).await.is_err());
    let tcp = ns.tcp_connect(proxy.local_addr()).await.unwrap();
    let mut tls = connector(&ca, None, &[])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(echo_once(&mut tls, b"inside").await, b"inside");

    proxy
        .reload(&listener(outside, &server, None, &[]))
        .unwrap();
    let tcp = ns.tcp_connect(proxy.local_addr()).await.unwrap();
    let mut tls = connector(&ca, None, &[])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let _ = tls.write_all(b"outside").await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "reached the caller's loopback: {got:?}");
    assert_eq!(proxy.stats().upstream_failures, 1);
    proxy.shutdown().await;
}
