//! HAProxy and nginx from Debian, in front of the sidecar: example/terminators/*.conf with this
//! run's ports and paths, each process killed when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::system::Ports;
use crate::common::{certs_dir, repo};

pub struct Terminator {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Terminator {
    pub fn haproxy(ports: Ports, run_dir: &Path) -> Terminator {
        let certs = certs_dir();
        let mut combined = fs::read(certs.join("example.tls.pem")).expect("example.tls.pem");
        combined.extend(fs::read(certs.join("example.tls.key")).expect("example.tls.key"));
        fs::write(run_dir.join("haproxy-server.pem"), combined).expect("write haproxy-server.pem");
        let config = render("haproxy.cfg", ports.haproxy, ports.sidecar_haproxy, run_dir);
        let args = ["-db", "-f", config.to_str().expect("path")];
        Terminator::start("haproxy", &args, ports.haproxy, run_dir)
    }

    pub fn nginx(ports: Ports, run_dir: &Path) -> Terminator {
        let config = render("nginx.conf", ports.nginx, ports.sidecar_nginx, run_dir);
        let prefix = format!("{}/", run_dir.display());
        let args = [
            "-p",
            &prefix,
            "-e",
            "stderr",
            "-c",
            config.to_str().expect("path"),
        ];
        Terminator::start("nginx", &args, ports.nginx, run_dir)
    }

    fn start(name: &'static str, args: &[&str], port: u16, run_dir: &Path) -> Terminator {
        let log = run_dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("create log");
        let child = Command::new(binary(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {name} ({e}): `make setup-terminators` installs it")
            });
        let mut t = Terminator { name, child, log };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = t.child.try_wait() {
                panic!("{name} exited with {status}:\n{}", t.log());
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not listen:\n{}",
                t.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        t
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Terminator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log());
        }
    }
}

/// Debian installs them in /usr/sbin, which a user's PATH may lack.
fn binary(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from(name)
    }
}

fn render(file: &str, port: u16, inner: u16, run_dir: &Path) -> PathBuf {
    let source = fs::read_to_string(repo().join("example/terminators").join(file)).expect(file);
    let text = source
        .replace("@PORT@", &port.to_string())
        .replace("@INNER_PORT@", &inner.to_string())
        .replace("@CERTS_DIR@", &certs_dir().display().to_string())
        .replace("@RUN_DIR@", &run_dir.display().to_string());
    let path = run_dir.join(file);
    fs::write(&path, text).expect("write the configuration");
    path
}
