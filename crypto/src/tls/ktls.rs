//! Kernel TLS hand-off of a rustls server session (Linux `tls` ULP), written
//! against `linux/tls.h` directly so that it builds for every target the
//! agent ships (glibc and musl, x86-64 and aarch64).
//!
//! 1. [`Cork`] wraps the TCP stream during the handshake and hands rustls at
//!    most the rest of the current TLS record per read, so when the
//!    handshake completes nothing after the client's `Finished` has left the
//!    socket: later records are still in the kernel's receive queue, where
//!    `TLS_RX` decrypts them.
//! 2. [`hand_off`] extracts the traffic secrets and sequence numbers from
//!    rustls (`dangerous_extract_secrets`: refuses while records are unsent),
//!    attaches the ULP and installs `TLS_TX` and `TLS_RX`. The key copies in
//!    the setsockopt structs are zeroized right after the calls.
//! 3. [`KtlsStream`] is the socket afterwards: writes are plain `write`s (the
//!    kernel makes application-data records); reads use `recvmsg` with a
//!    `TLS_GET_RECORD_TYPE` control message so that an alert
//!    (`close_notify` or fatal) ends the stream instead of failing the read;
//!    shutdown sends `close_notify` as an alert record (`TLS_SET_RECORD_TYPE`).
//!
//! Not handled: TLS 1.3 `KeyUpdate` from the peer (Linux 6.1 cannot rekey a
//! kTLS socket; the stream ends with an error) — other post-handshake
//! handshake messages are skipped.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustls::ConnectionTrafficSecrets;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use zeroize::Zeroize;

/// TLS content types (RFC 8446 §5.1).
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
/// Largest TLS record payload plus the most any AEAD/padding adds.
const MAX_RECORD: usize = (1 << 14) + 2048;

/// A reader that never reads past the end of the current TLS record; see
/// the module docs. Writes pass straight through.
#[derive(Debug)]
pub struct Cork<IO> {
    io: IO,
    header: [u8; 5],
    have: usize,
    /// Payload bytes of the current record still to read; `None` while in
    /// a header.
    payload_left: Option<usize>,
    /// Something that is not TLS arrived: pass through and let rustls fail.
    passthrough: bool,
}

impl<IO> Cork<IO> {
    pub fn new(io: IO) -> Self {
        Cork {
            io,
            header: [0; 5],
            have: 0,
            payload_left: None,
            passthrough: false,
        }
    }

    pub fn into_inner(self) -> IO {
        self.io
    }

    /// True when the stream stands between two records.
    pub fn at_record_boundary(&self) -> bool {
        !self.passthrough && self.have == 0 && self.payload_left.is_none()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Cork<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.passthrough {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let want = match this.payload_left {
            Some(left) => left,
            None => 5 - this.have,
        }
        .min(buf.remaining());
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(want));
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut limited))?;
        let n = limited.filled().len();
        match this.payload_left {
            Some(left) => {
                this.payload_left = (left - n > 0).then_some(left - n);
            }
            None => {
                this.header[this.have..this.have + n].copy_from_slice(limited.filled());
                this.have += n;
                if this.have == 5 {
                    this.have = 0;
                    let len = usize::from(u16::from_be_bytes([this.header[3], this.header[4]]));
                    if !(20..=24).contains(&this.header[0]) || len > MAX_RECORD {
                        this.passthrough = true;
                    } else if len > 0 {
                        this.payload_left = Some(len);
                    }
                }
            }
        }
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Cork<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Why a hand-off did not happen. The messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum HandOffError {
    #[error("the handshake left bytes inside rustls (not at a record boundary)")]
    NotAtBoundary,
    #[error("rustls holds {0} bytes of plaintext already received")]
    BufferedPlaintext(usize),
    #[error("rustls refused to export the session secrets: {0}")]
    Export(#[source] rustls::Error),
    #[error("no negotiated protocol version")]
    NoVersion,
    #[error("setsockopt(TCP_ULP, \"tls\")")]
    Ulp(#[source] io::Error),
    #[error("setsockopt(SOL_TLS, {0})")]
    State(&'static str, #[source] io::Error),
}

/// Moves an established rustls session onto the socket's kernel TLS state.
/// On error the connection is unusable (the session state is consumed).
pub fn hand_off(
    tls: tokio_rustls::server::TlsStream<Cork<TcpStream>>,
) -> Result<KtlsStream, HandOffError> {
    let (cork, mut conn) = tls.into_inner();
    if !cork.at_record_boundary() {
        return Err(HandOffError::NotAtBoundary);
    }
    // Plaintext rustls decrypted but nobody read: the cork makes this
    // impossible after a handshake; refuse rather than lose it.
    let mut probe = [0u8; 1];
    match io::Read::read(&mut conn.reader(), &mut probe) {
        Ok(n) if n > 0 => return Err(HandOffError::BufferedPlaintext(n)),
        _ => {}
    }
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => libc::TLS_1_2_VERSION,
        Some(rustls::ProtocolVersion::TLSv1_3) => libc::TLS_1_3_VERSION,
        _ => return Err(HandOffError::NoVersion),
    };
    let secrets = conn
        .dangerous_extract_secrets()
        .map_err(HandOffError::Export)?;
    let tcp = cork.into_inner();
    let fd = tcp.as_raw_fd();
    setsockopt(fd, libc::SOL_TCP, libc::TCP_ULP, b"tls").map_err(HandOffError::Ulp)?;
    install(fd, libc::TLS_TX, version, secrets.tx).map_err(|e| HandOffError::State("TLS_TX", e))?;
    install(fd, libc::TLS_RX, version, secrets.rx).map_err(|e| HandOffError::State("TLS_RX", e))?;
    Ok(KtlsStream {
        tcp,
        read_closed: false,
        write_closed: false,
    })
}

/// setsockopt(2) of one `T` (also the kTLS probe's).
pub(super) fn setsockopt<T>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live `T` for the whole call and its size is the
    // length passed; `fd` is a socket owned by the caller.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Installs one direction's key; the struct's key bytes are wiped after.
fn install(
    fd: RawFd,
    direction: i32,
    version: u16,
    (seq, secrets): (u64, ConnectionTrafficSecrets),
) -> io::Result<()> {
    use ConnectionTrafficSecrets as S;
    use libc::{
        tls12_crypto_info_aes_gcm_128 as Aes128, tls12_crypto_info_aes_gcm_256 as Aes256,
        tls12_crypto_info_chacha20_poly1305 as Chacha20,
    };
    let to = Socket {
        fd,
        direction,
        version,
        rec_seq: seq.to_be_bytes(),
    };
    match secrets {
        S::Aes128Gcm { key, iv } => to.set::<Aes128>(key.as_ref(), iv.as_ref()),
        S::Aes256Gcm { key, iv } => to.set::<Aes256>(key.as_ref(), iv.as_ref()),
        S::Chacha20Poly1305 { key, iv } => to.set::<Chacha20>(key.as_ref(), iv.as_ref()),
        _ => Err(io::Error::from(io::ErrorKind::Unsupported)),
    }
}

/// One direction (`TLS_TX` or `TLS_RX`) of a kTLS socket and what its key
/// is set with besides the secrets.
struct Socket {
    fd: RawFd,
    direction: i32,
    version: u16,
    rec_seq: [u8; 8],
}

impl Socket {
    /// Sets a `T` filled with `key` and rustls' 12-byte `iv`, and wipes its
    /// secret fields on every path. For AES-GCM the kernel wants the IV's
    /// first 4 bytes as the salt and the other 8 as the IV;
    /// ChaCha20-Poly1305 has no salt and takes all 12.
    fn set<T: CryptoInfo>(&self, key: &[u8], iv: &[u8]) -> io::Result<()> {
        let mut s = T::empty(self.version, self.rec_seq);
        let mut fill_and_set = || {
            let [k, salt, v] = s.secrets();
            let (salt_bytes, iv_bytes) = iv.split_at(salt.len().min(iv.len()));
            copy(k, key)?;
            copy(salt, salt_bytes)?;
            copy(v, iv_bytes)?;
            setsockopt(self.fd, libc::SOL_TLS, self.direction, &s)
        };
        let r = fill_and_set();
        for field in s.secrets() {
            field.zeroize();
        }
        r
    }
}

/// A kernel `tls12_crypto_info_*` struct: made empty, seen as its secret
/// fields.
trait CryptoInfo: Sized {
    /// The struct for TLS `version` with `rec_seq`, its secrets zero.
    fn empty(version: u16, rec_seq: [u8; 8]) -> Self;
    /// The key, salt and IV fields, in that order.
    fn secrets(&mut self) -> [&mut [u8]; 3];
}

/// `CryptoInfo` for a `libc` crypto-info struct and its cipher type.
macro_rules! crypto_info {
    ($struct:ty, $cipher:expr) => {
        impl CryptoInfo for $struct {
            fn empty(version: u16, rec_seq: [u8; 8]) -> Self {
                Self {
                    info: libc::tls_crypto_info {
                        version,
                        cipher_type: $cipher,
                    },
                    iv: [0; _],
                    key: [0; _],
                    salt: [0; _],
                    rec_seq,
                }
            }
            fn secrets(&mut self) -> [&mut [u8]; 3] {
                [&mut self.key, &mut self.salt, &mut self.iv]
            }
        }
    };
}

crypto_info!(
    libc::tls12_crypto_info_aes_gcm_128,
    libc::TLS_CIPHER_AES_GCM_128
);
crypto_info!(
    libc::tls12_crypto_info_aes_gcm_256,
    libc::TLS_CIPHER_AES_GCM_256
);
crypto_info!(
    libc::tls12_crypto_info_chacha20_poly1305,
    libc::TLS_CIPHER_CHACHA20_POLY1305
);

fn copy(dst: &mut [u8], src: &[u8]) -> io::Result<()> {
    if dst.len() != src.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidData));
    }
    dst.copy_from_slice(src);
    Ok(())
}

/// A TCP socket whose TLS records the kernel encrypts and decrypts.
#[derive(Debug)]
pub struct KtlsStream {
    tcp: TcpStream,
    read_closed: bool,
    write_closed: bool,
}

/// One `recvmsg`: `(record type, bytes)`.
fn recv_record(fd: RawFd, buf: &mut [u8]) -> io::Result<(u8, usize)> {
    // Room for one cmsg carrying one byte, aligned for cmsghdr.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null name, no iov, no control);
    // the fields set point into `iov` and `control`, which outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: `msg` is fully initialized and its buffers are writable.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut record = CONTENT_APPLICATION_DATA;
    // SAFETY: the CMSG_* helpers walk the control buffer the kernel filled
    // (`msg_controllen` bytes of `control`); CMSG_DATA of a TLS_GET_RECORD_TYPE
    // cmsg points to at least one byte.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_TLS && (*c).cmsg_type == libc::TLS_GET_RECORD_TYPE {
                record = *libc::CMSG_DATA(c);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((record, n as usize))
}

/// Sends `close_notify` as an alert record.
fn send_close_notify(fd: RawFd) -> io::Result<()> {
    let mut alert = [1u8, 0u8]; // warning, close_notify
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: alert.as_mut_ptr().cast(),
        iov_len: alert.len(),
    };
    // SAFETY: as in `recv_record`; the cmsg written is within `control`
    // (CMSG_SPACE(1) <= 64 bytes).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(1) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        (*c).cmsg_level = libc::SOL_TLS;
        (*c).cmsg_type = libc::TLS_SET_RECORD_TYPE;
        (*c).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(c) = CONTENT_ALERT;
        if libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl AsyncRead for KtlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.read_closed || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            ready!(this.tcp.poll_read_ready(cx))?;
            let fd = this.tcp.as_raw_fd();
            let unfilled = buf.initialize_unfilled();
            let got = this
                .tcp
                .try_io(Interest::READABLE, || recv_record(fd, unfilled));
            match got {
                Ok((CONTENT_APPLICATION_DATA, n)) => {
                    if n == 0 {
                        this.read_closed = true;
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok((CONTENT_ALERT, _)) => {
                    // close_notify or a fatal alert: the peer is done.
                    this.read_closed = true;
                    return Poll::Ready(Ok(()));
                }
                Ok((CONTENT_HANDSHAKE, n)) => {
                    // TLS 1.3 KeyUpdate (type 24) cannot be followed on this
                    // kernel; anything else post-handshake is skipped.
                    if n > 0 && unfilled[0] == 24 {
                        return Poll::Ready(Err(io::Error::other(
                            "peer sent a TLS 1.3 KeyUpdate; kernel TLS cannot rekey",
                        )));
                    }
                }
                Ok((other, _)) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unexpected TLS record type {other} after the handshake"),
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for KtlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while !this.write_closed {
            ready!(this.tcp.poll_write_ready(cx))?;
            let fd = this.tcp.as_raw_fd();
            match this
                .tcp
                .try_io(Interest::WRITABLE, || send_close_notify(fd))
            {
                Ok(()) => this.write_closed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // The peer is gone; nothing left to tell it.
                Err(_) => this.write_closed = true,
            }
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// Key material of the wrong length is refused before any system call
    /// (a short IV included: no slicing panic), and a socket without the
    /// TLS ULP refuses the key: an error either way, never a panic. No
    /// TENANCY.md invariant: this is the "nothing panics on any input" rule
    /// for the key hand-off (the hand-off itself is proved in crypto_vm).
    #[test]
    fn key_install_refuses_wrong_lengths_and_non_tls_sockets() {
        use libc::{
            tls12_crypto_info_aes_gcm_128 as Aes128,
            tls12_crypto_info_chacha20_poly1305 as Chacha20,
        };
        let to = |fd| Socket {
            fd,
            direction: libc::TLS_TX,
            version: libc::TLS_1_3_VERSION,
            rec_seq: [0; 8],
        };
        for (key, iv) in [
            (&[7u8; 15][..], &[1u8; 12][..]),
            (&[7; 16], &[1; 3]),
            (&[7; 16], &[1; 13]),
        ] {
            let e = to(-1).set::<Aes128>(key, iv).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{key:?} {iv:?}");
        }
        let e = to(-1).set::<Chacha20>(&[7; 32], &[1; 8]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // Right lengths, but no kTLS on the socket: the kernel says no.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert!(to(s.as_raw_fd()).set::<Aes128>(&[7; 16], &[1; 12]).is_err());
        assert!(
            to(s.as_raw_fd())
                .set::<Chacha20>(&[7; 32], &[1; 12])
                .is_err()
        );
    }

    #[tokio::test]
    async fn cork_never_reads_past_a_record() {
        // A handshake record, then an application-data record.
        let data = [22u8, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0, 2, 9, 9];
        let mut c = Cork::new(&data[..]);
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while got.len() < 8 {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
            assert!(got.len() <= 8, "read past the first record: {got:?}");
        }
        assert_eq!(got, data[..8]);
        assert!(c.at_record_boundary());
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, data[8..]);
        assert!(c.at_record_boundary());
    }

    #[tokio::test]
    async fn cork_passes_garbage_through() {
        let data = b"GET / HTTP/1.1\r\n\r\n";
        let mut c = Cork::new(&data[..]);
        let mut all = Vec::new();
        c.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, data);
        assert!(!c.at_record_boundary());
    }
}
