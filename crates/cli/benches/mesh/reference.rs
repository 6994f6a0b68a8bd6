//! The reference proxies: a pair of nginx and a pair of HAProxy in front of the
//! same server, doing a sidecar pair's hops. Each client-side proxy listens on
//! 127.0.0.1:10000 (mutual TLS to its peer's :10001) and 127.0.0.1:10002
//! (plaintext to its peer's :10003); the server side forwards to the app on
//! 127.0.0.1:8080 in its own pod. HAProxy also carries bulk TCP with mutual TLS
//! (127.0.0.1:10004 → :10005 → iperf3 on 127.0.0.1:5201); nginx-light has no
//! stream module for that.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// The two listeners every client-side reference proxy offers.
pub const TLS_URL: &str = "http://127.0.0.1:10000/";
pub const PLAIN_URL: &str = "http://127.0.0.1:10002/";
pub const BULK_PORT: u16 = 10004;

/// Which reference proxy a pair runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Nginx,
    Haproxy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    /// Whether the machine has it (Debian's `nginx-light`, `haproxy`).
    pub fn installed(self) -> bool {
        Command::new(self.name())
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The command lines for the client side and the server side, given the
    /// config files written in `dir`.
    pub fn commands(self, dir: &Path, workers: usize, server: Ipv4Addr) -> [Vec<String>; 2] {
        let d = dir.to_string_lossy();
        match self {
            Kind::Nginx => {
                write(dir, "nginx-client.conf", &nginx_client(&d, workers, server));
                write(dir, "nginx-server.conf", &nginx_server(&d, workers));
                ["client", "server"].map(|side| {
                    vec![
                        "nginx".into(),
                        "-p".into(),
                        d.to_string(),
                        "-c".into(),
                        format!("{d}/nginx-{side}.conf"),
                    ]
                })
            }
            Kind::Haproxy => {
                write(
                    dir,
                    "haproxy-client.cfg",
                    &haproxy_client(&d, workers, server),
                );
                write(dir, "haproxy-server.cfg", &haproxy_server(&d, workers));
                ["client", "server"].map(|side| {
                    vec![
                        "haproxy".into(),
                        "-db".into(),
                        "-f".into(),
                        format!("{d}/haproxy-{side}.cfg"),
                    ]
                })
            }
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"));
}

/// A private CA and a certificate for each side (CN and SAN `client`/`server`),
/// with the PEM bundles HAProxy wants.
pub fn certificates(dir: &Path) {
    std::fs::create_dir_all(dir).expect("reference dir");
    let sh = |script: &str| {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "{script}");
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=ca -keyout ca.key -out ca.crt 2>/dev/null",
    );
    for name in ["client", "server"] {
        sh(&format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN={name} -addext subjectAltName=DNS:{name} -keyout {name}.key -out {name}.csr 2>/dev/null && \
             openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 -copy_extensions copy -out {name}.crt 2>/dev/null && \
             chmod 644 {name}.key && cat {name}.crt {name}.key > {name}.pem"
        ));
    }
}

fn nginx_common(d: &str, side: &str, workers: usize) -> String {
    format!(
        "worker_processes {workers}; daemon off; pid {d}/nginx-{side}.pid; error_log {d}/nginx-{side}.err;
events {{ worker_connections 1024; }}"
    )
}

fn nginx_client(d: &str, workers: usize, server: Ipv4Addr) -> String {
    format!(
        "{}
http {{ access_log off;
  upstream tls {{ server {server}:10001; keepalive 32; }}
  upstream plain {{ server {server}:10003; keepalive 32; }}
  server {{ listen 127.0.0.1:10000;
    location / {{ proxy_pass https://tls; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_ssl_certificate {d}/client.crt; proxy_ssl_certificate_key {d}/client.key;
      proxy_ssl_trusted_certificate {d}/ca.crt; proxy_ssl_verify on; proxy_ssl_name server;
      proxy_ssl_session_reuse on; }} }}
  server {{ listen 127.0.0.1:10002;
    location / {{ proxy_pass http://plain; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}",
        nginx_common(d, "client", workers)
    )
}

fn nginx_server(d: &str, workers: usize) -> String {
    format!(
        "{}
http {{ access_log off;
  upstream app {{ server 127.0.0.1:8080; keepalive 32; }}
  server {{ listen 10001 ssl; ssl_certificate {d}/server.crt; ssl_certificate_key {d}/server.key;
    ssl_client_certificate {d}/ca.crt; ssl_verify_client on;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}
  server {{ listen 10003;
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}",
        nginx_common(d, "server", workers)
    )
}

fn haproxy_common(d: &str, side: &str, workers: usize) -> String {
    format!(
        "global
  nbthread {workers}
  pidfile {d}/haproxy-{side}.pid
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
"
    )
}

fn haproxy_client(d: &str, workers: usize, server: Ipv4Addr) -> String {
    format!(
        "{}frontend tls_in
  bind 127.0.0.1:10000
  default_backend tls_out
backend tls_out
  server s {server}:10001 ssl crt {d}/client.pem ca-file {d}/ca.crt verify required sni str(server) verifyhost server
frontend plain_in
  bind 127.0.0.1:10002
  default_backend plain_out
backend plain_out
  server s {server}:10003
frontend bulk_in
  mode tcp
  bind 127.0.0.1:10004
  default_backend bulk_out
backend bulk_out
  mode tcp
  server s {server}:10005 ssl crt {d}/client.pem ca-file {d}/ca.crt verify required sni str(server) verifyhost server
",
        haproxy_common(d, "client", workers)
    )
}

fn haproxy_server(d: &str, workers: usize) -> String {
    format!(
        "{}frontend tls_in
  bind :10001 ssl crt {d}/server.pem ca-file {d}/ca.crt verify required
  default_backend app
frontend plain_in
  bind :10003
  default_backend app
backend app
  server a 127.0.0.1:8080
frontend bulk_tls
  mode tcp
  bind :10005 ssl crt {d}/server.pem ca-file {d}/ca.crt verify required
  default_backend iperf
backend iperf
  mode tcp
  server i 127.0.0.1:5201
",
        haproxy_common(d, "server", workers)
    )
}
