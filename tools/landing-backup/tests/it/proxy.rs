//! A fault-injecting HTTP proxy on 127.0.0.1 in front of moto: one request per
//! connection, forwarded as-is; rules matching method + URL substring answer 503,
//! cut the response mid-body, or drop it after the upstream handled the request.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Answer 503 SlowDown without forwarding.
    Unavailable,
    /// Forward, then send half of the response and reset the connection.
    CutResponse,
    /// Forward (the upstream stores it), then close without any response.
    DropResponse,
    /// Do not forward; close, and raise `tripped()` (the test then kills the server).
    Trip,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub method: &'static str,
    pub contains: String,
    pub fault: Fault,
    pub times: usize,
}

#[derive(Default)]
struct Shared {
    rules: Mutex<Vec<Rule>>,
    /// (method, path?query) of every request seen.
    seen: Mutex<Vec<(String, String)>>,
    /// (method, path?query) of the requests that carried `If-None-Match: *`.
    conditional: Mutex<Vec<(String, String)>>,
    stop: AtomicBool,
    tripped: AtomicBool,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = handle(&s, conn, upstream);
                });
            }
        });
        Proxy { port, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn rule(&self, method: &'static str, contains: &str, fault: Fault, times: usize) {
        self.shared.rules.lock().unwrap().push(Rule { method, contains: contains.to_owned(), fault, times });
    }

    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().clear();
    }

    pub fn tripped(&self) -> bool {
        self.shared.tripped.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<(String, String)> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The requests seen with `If-None-Match: *` (conditional creates).
    pub fn conditional(&self) -> Vec<(String, String)> {
        self.shared.conditional.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn handle(s: &Shared, mut client: TcpStream, upstream: u16) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut line = String::new();
    let mut content_length = 0usize;
    let mut if_none_match = false;
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    head.extend_from_slice(line.as_bytes());
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if lower.strip_prefix("if-none-match:").is_some_and(|v| v.trim() == "*") {
            if_none_match = true;
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") {
            continue;
        }
        head.extend_from_slice(line.as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    s.seen.lock().unwrap().push((method.clone(), target.clone()));
    if if_none_match {
        s.conditional.lock().unwrap().push((method.clone(), target.clone()));
    }

    let fault = {
        let mut rules = s.rules.lock().unwrap();
        rules.iter_mut().find(|r| r.times > 0 && r.method == method && target.contains(&r.contains)).map(|r| {
            r.times -= 1;
            r.fault
        })
    };
    if fault == Some(Fault::Trip) {
        s.tripped.store(true, Ordering::SeqCst);
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    if fault == Some(Fault::Unavailable) {
        let msg = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        write!(client, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}", msg.len())?;
        return Ok(());
    }
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    match fault {
        Some(Fault::DropResponse) => {
            let _ = client.shutdown(Shutdown::Both);
        }
        Some(Fault::CutResponse) => {
            client.write_all(&response[..response.len() / 2])?;
            let _ = client.shutdown(Shutdown::Both);
        }
        _ => client.write_all(&response)?,
    }
    Ok(())
}
