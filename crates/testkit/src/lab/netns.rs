//! Running code inside a lab network namespace from this process: a dedicated thread joins the
//! namespace (setns affects only the calling thread) and runs a single-threaded tokio runtime,
//! so every socket it opens — etcd clients included — lives on the lab's LAN.

use std::os::fd::AsRawFd;

/// Runs `f` on a thread inside network namespace `ns` (a name under /run/netns).
pub fn spawn_in<F, Fut, T>(ns: &str, f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a namespace fd we own, for this thread only (CLONE_NEWNET).
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        runc_etcd_host::install_crypto_provider();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime starts")
            .block_on(f())
    })
}

/// Runs `f` inside `ns` and waits for its result.
pub fn run_in<F, Fut, T>(ns: &str, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    spawn_in(ns, f).join().expect("the netns thread does not panic")
}

/// Binds a TCP listener inside `ns`; it keeps that namespace whichever thread serves it.
pub fn bind_in(ns: &str, addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        // SAFETY: setns on a namespace fd we own, for this short-lived thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpListener::bind(addr)
    })
    .join()
    .expect("the bind thread does not panic")
}
