//! psd-extract against a real HTTP server on 127.0.0.1, real SQLite and real files.
//!
//! The shared server and paths are here (the zip builders in support.rs); the tests are in the modules, by topic.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod bad_input;
mod fetch;
mod interrupted;
mod support;

use std::process::Stdio;
use std::time::Duration;

use materia_common::Month;
use materia_test_support::psd_server::{Fault, Route, Server};
use support::*;

const COFFEE: &str = "/downloads/psd_coffee_csv.zip";

fn archive(y: u16, m: u8) -> String {
    format!("/downloads/archives/{y:04}/{m:02}/psd_coffee_csv.zip")
}

/// A server with the current file and archives for 2024-01..=2024-03 (2024-04 not released).
fn psd_server() -> Server {
    let s = Server::start();
    s.set(COFFEE, Route::new(psd_zip(40, "current"), "\"cur-1\""));
    for m in 1..=3 {
        s.set(&archive(2024, m), Route::new(psd_zip(30 + m as usize, &format!("2024-{m}")), &format!("\"a{m}:0\"")));
    }
    s
}
