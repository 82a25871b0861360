//! A partner (or an attacker) as a real HTTPS client: reqwest with rustls, the example root CA, a
//! client certificate, and the example's host names resolved to the front proxies' ports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::Value;

use super::common::{self, certs_dir};
use super::system::Ports;

/// The host names of the example, each with the port of the front proxy that serves it.
fn hosts(ports: &Ports) -> [(&'static str, u16); 8] {
    [
        ("login.example.com", ports.front),
        ("api.example.com", ports.front),
        ("api-selfsigned.example.com", ports.front),
        ("api-json.example.com", ports.formats),
        ("api-introspection-jwt.example.com", ports.formats),
        ("api-mesh.example.com", ports.front),
        // HAProxy and nginx present *.example.com too.
        ("api-haproxy.example.com", ports.haproxy),
        ("api-nginx.example.com", ports.nginx),
    ]
}

pub struct Partner {
    pub name: String,
    client: Client,
    ports: Ports,
}

/// An answer: status, `WWW-Authenticate`, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub www_authenticate: Option<String>,
    pub body: String,
}

/// A refusal with this status and OAuth error, in the body and the challenge.
pub fn assert_denied(a: &Answer, status: u16, error: &str, what: &str) {
    assert_eq!(
        (a.status, a.error().as_str()),
        (status, error),
        "{what}: {a:?}"
    );
    let challenge = a.www_authenticate.as_deref().unwrap_or_default();
    assert!(
        challenge.contains(&format!("error=\"{error}\"")),
        "{what}: WWW-Authenticate {challenge:?}"
    );
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Partner {
    /// A client presenting `cert`/`key` (paths), or no certificate at all.
    pub fn with_files(
        name: &str,
        cert_and_key: Option<(PathBuf, PathBuf)>,
        ports: Ports,
    ) -> Partner {
        let identity = cert_and_key
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let builder = common::mtls_client_builder(&hosts(&ports), identity)
            .timeout(Duration::from_secs(15))
            // A new connection (and TLS handshake) for every request: each call is judged afresh.
            .pool_max_idle_per_host(0);
        Partner {
            name: name.to_string(),
            client: builder.build().expect("HTTPS client"),
            ports,
        }
    }

    /// A client with `certs/out/<stem>.pem` and `.key`.
    pub fn new(stem: &str, ports: Ports) -> Partner {
        let dir = certs_dir();
        Partner::with_files(
            stem,
            Some((
                dir.join(format!("{stem}.pem")),
                dir.join(format!("{stem}.key")),
            )),
            ports,
        )
    }

    pub fn without_certificate(ports: Ports) -> Partner {
        Partner::with_files("no certificate", None, ports)
    }

    pub fn from_dir(stem: &str, dir: &Path, ports: Ports) -> Partner {
        Partner::with_files(
            stem,
            Some((
                dir.join(format!("{stem}.pem")),
                dir.join(format!("{stem}.key")),
            )),
            ports,
        )
    }

    fn port_of(&self, host: &str) -> u16 {
        hosts(&self.ports)
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, p)| *p)
            .expect("known host")
    }

    /// client_credentials at the token endpoint, through the front proxy's TLS pass-through.
    pub fn request_token(&self, client_id: &str, scope: &str) -> Result<Answer, reqwest::Error> {
        let url = format!(
            "https://login.example.com:{}/oauth/v2/oauth-token-mutual-tls",
            self.port_of("login.example.com")
        );
        let body = format!("grant_type=client_credentials&client_id={client_id}&scope={scope}");
        let response = self
            .client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()?;
        answer(response)
    }

    /// RFC 7009 revocation of one of this partner's tokens, authenticated by its certificate as at
    /// the token endpoint (through the front proxy's TLS pass-through).
    pub fn revoke(&self, client_id: &str, token: &str) -> Answer {
        let url = format!(
            "https://login.example.com:{}/oauth/v2/oauth-revoke",
            self.port_of("login.example.com")
        );
        let response = self
            .client
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("client_id={client_id}&token={token}"))
            .send()
            .unwrap_or_else(|e| panic!("{}: revocation request failed: {e:?}", self.name));
        answer(response).expect("revocation answer")
    }

    /// An access token, or a panic that says why not.
    pub fn token(&self, client_id: &str, scope: &str) -> String {
        let a = self
            .request_token(client_id, scope)
            .unwrap_or_else(|e| panic!("{}: token request failed: {e:?}", self.name));
        assert_eq!(a.status, 200, "{}: token endpoint: {a:?}", self.name);
        let token = a.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_string();
        assert!(
            !token.contains('.'),
            "the access token is opaque, not a JWT"
        );
        token
    }

    /// A request to the API through the front proxy that serves `host`.
    pub fn call(
        &self,
        method: &str,
        host: &str,
        token: Option<&str>,
        extra_headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Answer, reqwest::Error> {
        let url = format!("https://{host}:{}/api/transactions", self.port_of(host));
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, url);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in extra_headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        answer(request.send()?)
    }

    /// POST /api/transactions with an amount.
    pub fn create(&self, host: &str, token: &str, amount: u64) -> Answer {
        self.call(
            "POST",
            host,
            Some(token),
            &[],
            Some(&format!("{{\"amount\": {amount}}}")),
        )
        .unwrap_or_else(|e| panic!("{}: POST on {host} failed: {e:?}", self.name))
    }
}

fn answer(response: reqwest::blocking::Response) -> Result<Answer, reqwest::Error> {
    let status = response.status().as_u16();
    let www_authenticate = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.text()?;
    Ok(Answer {
        status,
        www_authenticate,
        body,
    })
}
