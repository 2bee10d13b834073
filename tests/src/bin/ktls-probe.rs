//! `ktls-probe`: proves kernel TLS works in the running kernel, for the VM
//! rig (built static with musl and copied into the guest).
//!
//! Over a loopback TCP connection it attaches the `tls` ULP to both ends,
//! installs the same AES-GCM-128 TLS 1.2 key as the client's TX and the
//! server's RX state, and sends a message: it arrives intact only if the
//! kernel encrypted it into TLS records on one side and decrypted them on the
//! other. Prints one line per step; exits 1 with the failing step otherwise.
//! The key is a fixed test vector, never a secret.

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

fn main() -> ExitCode {
    match probe() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ktls-probe failed at {e}");
            ExitCode::FAILURE
        }
    }
}
