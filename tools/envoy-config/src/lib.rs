//! The one generator of certbound's Envoy configurations.
//!
//! - `bootstrap`, `api_listener`, `downstream_tls`, `wasm_filter`, …: the pieces every generated
//!   configuration is made of (one mutual-TLS listener, its TLS context, the wasm filter, static
//!   clusters). `tests/common/envoy.rs` uses them directly; the benchmark (`bench/bench.py`) through
//!   the `envoy-config api` command.
//! - `front_proxy`: the example system's front proxy. Its source is the commented `envoy/envoy.yaml`
//!   (and `envoy/envoy-formats.yaml`); this renders it for a run on other ports (`example/system.sh`,
//!   the end-to-end tests) and for the containers of docker-compose (`envoy/envoy-compose.yaml` is
//!   that rendering, checked by a test).
//!
//! Envoy reads JSON as YAML, so the generated bootstraps are JSON.

use serde_json::{json, Value};
use std::path::Path;

const TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// `vm_config.code` for a module file.
pub fn local_code(path: &Path) -> Value {
    json!({"local": {"filename": path.display().to_string()}})
}

/// `vm_config.code` for a module Envoy downloads from `http://127.0.0.1:<port>/certbound.wasm`
/// through the cluster `wasm_server`, checked against `sha256`, retried `num_retries` times.
pub fn remote_code(port: u16, sha256: &str, num_retries: u32) -> Value {
    json!({"remote": {
        "http_uri": {
            "uri": format!("http://127.0.0.1:{port}/certbound.wasm"),
            "cluster": "wasm_server",
            "timeout": "10s"
        },
        "sha256": sha256,
        "retry_policy": {
            "num_retries": num_retries,
            "retry_back_off": {"base_interval": "0.1s", "max_interval": "0.2s"}
        }
    }})
}

/// The `envoy.filters.http.wasm` filter: module `code`, VM and root id `name`, fail closed, and the
/// plugin configuration (certbound's JSON) when given.
pub fn wasm_filter(name: &str, code: Value, configuration: Option<&Value>) -> Value {
    let mut config = json!({
        "name": name,
        "root_id": name,
        "vm_config": {
            "vm_id": name,
            "runtime": "envoy.wasm.runtime.v8",
            "code": code
        },
        "fail_open": false
    });
    if let Some(c) = configuration {
        config["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": c.to_string()
        });
    }
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": config
        }
    })
}

/// `filter` (a `wasm_filter`) with the VM environment `environment_variables` (Envoy's
/// `EnvironmentVariables`: `host_env_keys` passed from Envoy's own environment, `key_values` set
/// here). The filter reads `introspection.client_secret_env` from it.
pub fn with_vm_environment(mut filter: Value, environment_variables: Value) -> Value {
    filter["typed_config"]["config"]["vm_config"]["environment_variables"] = environment_variables;
    filter
}

pub fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    })
}

/// A cluster of one endpoint on 127.0.0.1.
pub fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
            }}]}]
        }
    })
}

/// The listener's TLS: the example server certificate from `certs`, client certificates chaining
/// to `trust.pem`, required unless `require_client_certificate` is false.
pub fn downstream_tls(certs: &Path, require_client_certificate: bool) -> Value {
    let file = |name: &str| json!({"filename": certs.join(name).display().to_string()});
    json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_CONTEXT,
            "require_client_certificate": require_client_certificate,
            "common_tls_context": {
                "tls_certificates": [{
                    "certificate_chain": file("example.tls.pem"),
                    "private_key": file("example.tls.key")
                }],
                "validation_context": {"trusted_ca": file("trust.pem")}
            }
        }
    })
}

/// Routing to one cluster for every request.
pub fn routes_to(cluster: &str) -> Value {
    json!([{"match": {"prefix": "/"}, "route": {"cluster": cluster}}])
}

/// The API listener: mutual TLS on 127.0.0.1:`port`, HTTP with `http_filters` (the router is
/// added last) and `routes` for every host name.
pub fn api_listener(port: u16, tls: Value, routes: Value, http_filters: Vec<Value>) -> Value {
    let mut filters = http_filters;
    filters.push(router());
    json!({
        "name": "api",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{
            "transport_socket": tls,
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": HCM,
                    "stat_prefix": "api",
                    "codec_type": "AUTO",
                    "route_config": {
                        "name": "api",
                        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]
                    },
                    "http_filters": filters
                }
            }]
        }]
    })
}

/// A whole bootstrap: the admin interface on 127.0.0.1:`admin_port`, listeners and clusters.
pub fn bootstrap(admin_port: u16, listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    })
}

/// Where the front proxy is rendered for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// This machine, with each default port of the source mapped to another: (default, port).
    Ports(Vec<(u16, u16)>),
    /// docker-compose's containers: listeners on 0.0.0.0, the services by name through Docker's DNS.
    Compose,
}

/// The default ports of `envoy/envoy.yaml` and `envoy/envoy-formats.yaml`, by what they are.
pub const DEFAULT_PORTS: [(&str, u16); 10] = [
    ("front", 8443),
    ("idsvr", 8444),
    ("api", 8080),
    ("admin", 9901),
    ("formats", 8445),
    ("formats-admin", 9902),
    ("sidecar", 8447),
    ("sidecar-haproxy", 8448),
    ("sidecar-nginx", 8449),
    ("sidecar-admin", 9903),
];

/// The services of docker-compose.yml, by the port they listen on.
const COMPOSE_SERVICES: [(u16, &str); 2] = [(8080, "api"), (8444, "idsvr")];

/// The admin interfaces: on the container's loopback only, in compose as everywhere (whoever
/// reaches Envoy's admin interface can reconfigure or stop it). And the sidecar of the mesh chain
/// (8447), which docker-compose.yml does not run: api-mesh.example.com answers 503 there.
const COMPOSE_LOOPBACK: [u16; 3] = [9901, 9902, 8447];

const COMPOSE_HEADER: &str = "\
# GENERATED from envoy/envoy.yaml by `envoy-config front-proxy envoy/envoy.yaml --compose`
# (tools/envoy-config): do not edit, change envoy.yaml and render again (`make envoy-compose`).
# For docker-compose.yml: the same front proxy, with the containers' addresses. The listener binds
# 0.0.0.0 (published on the host's 127.0.0.1 by compose), the admin interface the container's
# loopback only (docker-compose exec envoy ... to reach it); the clusters name the
# services (api, idsvr) and resolve them with Docker's DNS (STRICT_DNS). Relative paths resolve
# against Envoy's working directory, /certbound in the container (compose mounts certs/out and the
# wasm there at the same relative paths), or the repository root for `make validate`.
";

/// `source` (the text of a front-proxy YAML of `envoy/`) rendered for `target`. Lines are changed
/// where they hold an address and a port (`address: 127.0.0.1, port_value: N`) or a cluster type;
/// everything else, comments included, stays as it is. An error names what the source lacks.
pub fn front_proxy(source: &str, target: &Target) -> Result<String, String> {
    let mut out = String::with_capacity(source.len() + 512);
    let mut body = source;
    if *target == Target::Compose {
        // The source's own header comment describes the source; the rendering has its own.
        let start = source
            .find("\nadmin:\n")
            .ok_or("the source has no top-level `admin:`")?;
        out.push_str(COMPOSE_HEADER);
        body = &source[start..];
    }
    let mut changed = 0;
    for line in body.split_inclusive('\n') {
        match render_line(line, target) {
            Some(new) => {
                out.push_str(&new);
                changed += 1;
            }
            None => out.push_str(line),
        }
    }
    if changed == 0 {
        return Err("the source has no `address: 127.0.0.1, port_value: N` to render".into());
    }
    Ok(out)
}

fn render_line(line: &str, target: &Target) -> Option<String> {
    const LOCAL: &str = "address: 127.0.0.1, port_value: ";
    if let Some(at) = line.find(LOCAL) {
        let digits_at = at + LOCAL.len();
        let digits: String = line[digits_at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        let port: u16 = digits.parse().ok()?;
        let rest = &line[digits_at + digits.len()..];
        let (address, port) = match target {
            Target::Ports(map) => {
                let to = map.iter().find(|(from, _)| *from == port)?.1;
                ("127.0.0.1", to)
            }
            Target::Compose if COMPOSE_LOOPBACK.contains(&port) => ("127.0.0.1", port),
            Target::Compose => {
                let service = COMPOSE_SERVICES.iter().find(|(p, _)| *p == port);
                (service.map_or("0.0.0.0", |(_, s)| *s), port)
            }
        };
        return Some(format!(
            "{}address: {address}, port_value: {port}{rest}",
            &line[..at]
        ));
    }
    if *target == Target::Compose && line.trim() == "type: STATIC" {
        let indent = &line[..line.len() - line.trim_start().len()];
        return Some(format!(
            "{indent}type: STRICT_DNS\n{indent}dns_lookup_family: V4_ONLY\n"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "# header\nadmin:\n  address:\n    socket_address: { address: 127.0.0.1, port_value: 9901 }\n\
        static_resources:\n  clusters:\n    - name: api\n      type: STATIC\n\
        \x20     endpoint: { address: 127.0.0.1, port_value: 8080 } # the API\n\
        \x20     other: { address: 127.0.0.1, port_value: 8081 }\n";

    #[test]
    fn ports_are_mapped_and_nothing_else_changes() {
        let out = front_proxy(SOURCE, &Target::Ports(vec![(8080, 18080), (9901, 19901)])).unwrap();
        assert!(out.starts_with("# header\n"));
        assert!(out.contains("{ address: 127.0.0.1, port_value: 19901 }\n"));
        assert!(out.contains("{ address: 127.0.0.1, port_value: 18080 } # the API\n"));
        assert!(out.contains("port_value: 8081 }"), "an unmapped port stays");
        assert!(out.contains("type: STATIC\n"));
        assert_eq!(out.lines().count(), SOURCE.lines().count());
    }

    #[test]
    fn compose_binds_everywhere_but_admin_and_names_the_services() {
        let out = front_proxy(SOURCE, &Target::Compose).unwrap();
        assert!(out.starts_with("# GENERATED from envoy/envoy.yaml"));
        assert!(!out.contains("# header"));
        assert!(
            out.contains("{ address: 127.0.0.1, port_value: 9901 }"),
            "admin: loopback"
        );
        assert!(out.contains("{ address: 0.0.0.0, port_value: 8081 }"));
        assert!(out.contains("{ address: api, port_value: 8080 } # the API"));
        assert!(out.contains("      type: STRICT_DNS\n      dns_lookup_family: V4_ONLY\n"));
        assert!(front_proxy("admin: {}\n", &Target::Compose).is_err());
    }

    #[test]
    fn the_api_listener_has_the_filters_then_the_router() {
        let tls = downstream_tls(Path::new("/certs"), true);
        let filter = wasm_filter(
            "certbound",
            local_code(Path::new("/m.wasm")),
            Some(&json!({"a": 1})),
        );
        let l = api_listener(8443, tls, routes_to("upstream"), vec![filter]);
        let hcm = &l["filter_chains"][0]["filters"][0]["typed_config"];
        let names: Vec<&str> = hcm["http_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["envoy.filters.http.wasm", "envoy.filters.http.router"]
        );
        let wasm = &hcm["http_filters"][0]["typed_config"]["config"];
        assert_eq!(wasm["configuration"]["value"], "{\"a\":1}");
        assert_eq!(wasm["fail_open"], false);
        let tls = &l["filter_chains"][0]["transport_socket"]["typed_config"];
        assert_eq!(tls["require_client_certificate"], true);
        assert_eq!(
            tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
            "/certs/trust.pem"
        );
    }
}
