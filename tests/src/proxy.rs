//! A TCP proxy a test can cut and heal: a network partition between two
//! daemons on loopback, one direction of traffic at a time (each daemon is
//! told to reach the other through it), without root or firewall rules.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::TIMEOUT;

/// Forwards TCP connections to `target` until cut; while cut, existing
/// connections are shut down and new ones closed at once.
pub struct Proxy {
    /// Where to connect to reach the target through the proxy.
    pub addr: String,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    pub fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let accept = {
            let (cut, stop, open) = (cut.clone(), stop.clone(), open.clone());
            std::thread::spawn(move || {
                for inbound in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(inbound) = inbound else { continue };
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the peer sees the connection close
                    }
                    let Ok(outbound) =
                        TcpStream::connect_timeout(&target.parse().unwrap(), TIMEOUT)
                    else {
                        continue;
                    };
                    let mut list = open.lock().unwrap();
                    list.retain(|s| s.peer_addr().is_ok());
                    for s in [&inbound, &outbound] {
                        list.push(s.try_clone().unwrap());
                    }
                    pump(inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
                    pump(outbound, inbound);
                }
            })
        };
        Proxy {
            addr,
            cut,
            stop,
            open,
            accept: Some(accept),
        }
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
