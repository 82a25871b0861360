//! The benchmark's tools, one binary:
//!
//! - `load`: a mutual-TLS HTTP/1.1 load generator on keep-alive connections whose `Authorization`
//!   can change with every request (round-robin over a token list, or a new token each time),
//!   which `oha` and `wrk` cannot do. Closed loop (saturation) or a fixed rate with latency
//!   measured from each request's scheduled time (no coordinated omission). Prints JSON.
//! - `probe`: one request; prints the status, the headers and the body as JSON.
//! - `stub`: the identity-server stub: answers every introspection with one pre-signed JWT after a
//!   fixed delay, serves the JWKS, counts the calls.

mod load;
mod stub;

use std::collections::HashMap;
use std::process::ExitCode;

/// `--name value` pairs; a flag without a value is an error.
pub struct Args(HashMap<String, String>);

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut map = HashMap::new();
        let mut it = raw.iter();
        while let Some(name) = it.next() {
            let Some(name) = name.strip_prefix("--") else {
                return Err(format!("unexpected argument {name:?}"));
            };
            let value = it.next().ok_or(format!("--{name} needs a value"))?;
            map.insert(name.to_string(), value.clone());
        }
        Ok(Args(map))
    }

    pub fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn req(&self, name: &str) -> Result<&str, String> {
        self.opt(name).ok_or(format!("--{name} is required"))
    }

    pub fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.opt(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v:?}")),
        }
    }
}

const USAGE: &str = "usage:
  certbound-bench load  --addr IP:PORT --sni NAME --ca PEM --cert PEM --key PEM [--path /p]
                        [--connections 32] [--duration 5] [--warmup 1] [--rate RPS] [--requests N]
                        [--token T | --tokens-file FILE | --unique-tokens PREFIX]
  certbound-bench probe --addr IP:PORT --sni NAME --ca PEM --cert PEM --key PEM [--path /p] [--token T]
  certbound-bench stub  --port PORT --jwt FILE --jwks FILE [--delay-ms 2] [--basic 'id:secret']";

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = raw.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = Args::parse(rest).and_then(|args| match command.as_str() {
        "load" => load::run(&args, false),
        "probe" => load::run(&args, true),
        "stub" => stub::run(&args),
        _ => Err(format!("unknown command {command:?}\n{USAGE}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("certbound-bench {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
