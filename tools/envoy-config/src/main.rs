//! `envoy-config`: certbound's Envoy configurations on standard output.
//!
//!   envoy-config api --listen PORT --admin PORT --certs DIR [--no-client-certificate]
//!                    [--filter JSON]... [--routes JSON] [--cluster NAME=PORT]...
//!       A bootstrap with the mutual-TLS API listener (JSON). A `--filter` is an Envoy HTTP filter,
//!       or `{"wasm": {"name": N, "path": P, "configuration": {...}}}` for the wasm filter; the
//!       router comes last. `--routes` defaults to everything to the cluster `upstream`.
//!   envoy-config front-proxy SOURCE (--port DEFAULT=PORT ... | --compose)
//!       SOURCE (envoy/envoy.yaml or envoy/envoy-formats.yaml) for other ports, or for docker-compose.

use envoy_config::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("envoy-config: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<String, String> {
    match args.split_first() {
        Some((cmd, rest)) if cmd == "api" => api(rest),
        Some((cmd, rest)) if cmd == "front-proxy" => front(rest),
        _ => Err("usage: envoy-config api … | envoy-config front-proxy SOURCE … (see the source's header)".into()),
    }
}

fn number(flag: &str, value: &str) -> Result<u16, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: `{value}` is not a port"))
}

fn json(flag: &str, value: &str) -> Result<Value, String> {
    serde_json::from_str(value).map_err(|e| format!("{flag}: not JSON: {e}"))
}

fn api(args: &[String]) -> Result<String, String> {
    let (mut listen, mut admin, mut certs) = (None, None, None);
    let mut require_client_certificate = true;
    let (mut filters, mut routes, mut clusters) = (Vec::new(), None, Vec::new());
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--no-client-certificate" {
            require_client_certificate = false;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(number(flag, value)?),
            "--admin" => admin = Some(number(flag, value)?),
            "--certs" => certs = Some(PathBuf::from(value)),
            "--routes" => routes = Some(json(flag, value)?),
            "--filter" => {
                let f = json(flag, value)?;
                filters.push(match f.get("wasm") {
                    Some(w) => {
                        let name = w["name"]
                            .as_str()
                            .ok_or("--filter: wasm.name is required")?;
                        let path = w["path"]
                            .as_str()
                            .ok_or("--filter: wasm.path is required")?;
                        let code = local_code(&PathBuf::from(path));
                        wasm_filter(name, code, w.get("configuration"))
                    }
                    None => f,
                });
            }
            "--cluster" => {
                let (name, port) = value
                    .split_once('=')
                    .ok_or(format!("--cluster: `{value}` is not NAME=PORT"))?;
                clusters.push(static_cluster(name, number(flag, port)?));
            }
            other => return Err(format!("api: unknown flag {other}")),
        }
    }
    let certs = certs.ok_or("api: --certs is required")?;
    let listener = api_listener(
        listen.ok_or("api: --listen is required")?,
        downstream_tls(&certs, require_client_certificate),
        routes.unwrap_or_else(|| routes_to("upstream")),
        filters,
    );
    let config = bootstrap(
        admin.ok_or("api: --admin is required")?,
        vec![listener],
        clusters,
    );
    serde_json::to_string_pretty(&config).map_err(|e| e.to_string())
}

fn front(args: &[String]) -> Result<String, String> {
    let (source, rest) = args
        .split_first()
        .ok_or("front-proxy: SOURCE is required")?;
    let text = std::fs::read_to_string(source).map_err(|e| format!("{source}: {e}"))?;
    let target = match rest {
        [flag] if flag == "--compose" => Target::Compose,
        _ => {
            let mut map = Vec::new();
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                let value = it.next().filter(|_| flag == "--port");
                let value = value.ok_or(format!(
                    "front-proxy: expected --port DEFAULT=PORT, got {flag}"
                ))?;
                let (from, to) = value
                    .split_once('=')
                    .ok_or(format!("--port: `{value}` is not DEFAULT=PORT"))?;
                map.push((number(flag, from)?, number(flag, to)?));
            }
            Target::Ports(map)
        }
    };
    front_proxy(&text, &target).map_err(|e| format!("{source}: {e}"))
}
