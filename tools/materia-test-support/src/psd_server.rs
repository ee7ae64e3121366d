//! The PSD Online stand-in: a real HTTP/1.1 server on 127.0.0.1 that serves bodies with ETag and
//! Last-Modified, answers conditional GETs with 304, unknown paths with 404, and on
//! demand misbehaves (status codes, cut bodies, lying Content-Length, slow drip).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Misbehaviour for one response.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status (and `Retry-After` if given), empty body.
    Status(u16, Option<&'static str>),
    /// Send the headers with the full Content-Length, then this many body bytes, then close.
    CutAfter(usize),
    /// Declare this Content-Length, send the real body, close.
    DeclareLength(usize),
    /// Send the body in chunks of `chunk` bytes with `pause` between them.
    Drip { chunk: usize, pause: Duration },
    /// Send the headers and 100 body bytes, then go silent for this long, then close.
    Stall(Duration),
    /// Answer 302 with this Location.
    Redirect(String),
}

/// What a path serves.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub body: Vec<u8>,
    /// Raw ETag header bytes, sent as-is.
    pub etag: Option<Vec<u8>>,
    pub last_modified: Option<String>,
    /// A `Date` header (the server's clock), if any.
    pub date: Option<String>,
    /// Applied one per request, in order.
    pub faults: VecDeque<Fault>,
    /// Applied to every request once `faults` is empty.
    pub always: Option<Fault>,
}

impl Route {
    pub fn new(body: Vec<u8>, etag: &str) -> Self {
        Route { body, etag: Some(etag.as_bytes().to_vec()), ..Route::default() }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub at: Instant,
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    routes: Mutex<HashMap<String, Route>>,
    log: Mutex<Vec<Seen>>,
    stop: AtomicBool,
}

pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                thread::spawn(move || {
                    let _ = handle(&s, conn);
                });
            }
        });
        Server { addr, shared }
    }

    /// The base URL to give psd-extract.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, path: &str, route: Route) {
        self.shared.routes.lock().unwrap().insert(path.to_owned(), route);
    }

    pub fn remove(&self, path: &str) {
        self.shared.routes.lock().unwrap().remove(path);
    }

    pub fn push_fault(&self, path: &str, fault: Fault) {
        self.shared.routes.lock().unwrap().get_mut(path).expect("route").faults.push_back(fault);
    }

    pub fn set_always(&self, path: &str, fault: Option<Fault>) {
        self.shared.routes.lock().unwrap().get_mut(path).expect("route").always = fault;
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.shared.log.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Seen> {
        self.requests().into_iter().filter(|r| r.path == path).collect()
    }

    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// Wait until `path` has been requested `n` times.
    pub fn wait_for_requests(&self, path: &str, n: usize) {
        crate::wait_until(&format!("{n} requests to {path}"), Duration::from_secs(30), || self.requests_to(path).len() >= n);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn handle(shared: &Shared, mut conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let (route, fault) = {
        let mut routes = shared.routes.lock().unwrap();
        match routes.get_mut(&path) {
            Some(r) => {
                let fault = r.faults.pop_front().or_else(|| r.always.clone());
                (Some(r.clone()), fault)
            }
            None => (None, None),
        }
    };
    let status = match (&route, &fault) {
        (None, _) => 404,
        (_, Some(Fault::Status(s, _))) => *s,
        (_, Some(Fault::Redirect(_))) => 302,
        (Some(r), _) if is_fresh(r, &headers) => 304,
        _ => 200,
    };
    shared.log.lock().unwrap().push(Seen { path: path.clone(), headers, at: Instant::now(), status });

    let mut head = format!("HTTP/1.1 {status} {}\r\nConnection: close\r\n", reason(status)).into_bytes();
    let Some(route) = route.filter(|_| status == 200 || status == 304) else {
        if let Some(Fault::Status(_, Some(ra))) = &fault {
            head.extend_from_slice(format!("Retry-After: {ra}\r\n").as_bytes());
        }
        if let Some(Fault::Redirect(to)) = &fault {
            head.extend_from_slice(format!("Location: {to}\r\n").as_bytes());
        }
        head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        return conn.write_all(&head);
    };
    if let Some(etag) = &route.etag {
        head.extend_from_slice(b"ETag: ");
        head.extend_from_slice(etag);
        head.extend_from_slice(b"\r\n");
    }
    if let Some(lm) = &route.last_modified {
        head.extend_from_slice(format!("Last-Modified: {lm}\r\n").as_bytes());
    }
    if let Some(date) = &route.date {
        head.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    if status == 304 {
        head.extend_from_slice(b"\r\n");
        return conn.write_all(&head);
    }
    let body = &route.body;
    let declared = match fault {
        Some(Fault::DeclareLength(n)) => n,
        _ => body.len(),
    };
    head.extend_from_slice(format!("Content-Type: application/x-zip-compressed\r\nContent-Length: {declared}\r\n\r\n").as_bytes());
    conn.write_all(&head)?;
    match fault {
        Some(Fault::CutAfter(n)) => {
            conn.write_all(&body[..n.min(body.len())])?;
            conn.flush()?;
            // A reset, not a clean close: what a dropped connection looks like.
            let _ = conn.shutdown(Shutdown::Both);
            Ok(())
        }
        Some(Fault::Stall(pause)) => {
            conn.write_all(&body[..100.min(body.len())])?;
            conn.flush()?;
            thread::sleep(pause);
            Ok(())
        }
        Some(Fault::Drip { chunk, pause }) => {
            for part in body.chunks(chunk) {
                conn.write_all(part)?;
                conn.flush()?;
                thread::sleep(pause);
            }
            Ok(())
        }
        _ => conn.write_all(body),
    }
}

fn is_fresh(r: &Route, headers: &HashMap<String, String>) -> bool {
    if let Some(inm) = headers.get("if-none-match") {
        return r.etag.as_deref() == Some(inm.as_bytes());
    }
    match (headers.get("if-modified-since"), &r.last_modified) {
        (Some(ims), Some(lm)) => ims == lm,
        _ => false,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        304 => "Not Modified",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}
