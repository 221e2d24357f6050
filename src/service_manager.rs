//! Readiness for systemd (`Type=notify`, sd_notify(3)): one datagram with
//! `READY=1` to the socket named by `NOTIFY_SOCKET`, once every listener is
//! bound. Without that variable (not started by systemd) nothing happens.
//!
//! This module only sends state strings; it never reads the socket.

use std::os::unix::net::UnixDatagram;

/// Tells the service manager that `serve` accepts connections.
pub fn notify_ready() {
    notify("READY=1\nSTATUS=accepting connections");
}

/// Tells the service manager that `serve` is stopping.
pub fn notify_stopping() {
    notify("STOPPING=1");
}

fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(err) = send(&path, state) {
        tracing::warn!(error = %err, "cannot notify the service manager");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
    match bytes.split_first() {
        // An abstract socket (`@name`): Linux only.
        Some((b'@', name)) => {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)?;
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = name;
                return Err(std::io::Error::other("abstract sockets need Linux"));
            }
        }
        _ => {
            socket.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}
