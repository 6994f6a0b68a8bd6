//! The echo app over a real socket: httpbin's endpoints answer as httpbin's do.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get(port: u16, path: &str) -> String {
    for _ in 0..100 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
            let request = format!(
                "GET {path} HTTP/1.1\r\nhost: echo\r\nx-probe: yes\r\nconnection: close\r\n\r\n"
            );
            s.write_all(request.as_bytes()).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            return out;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the echo app never listened");
}

#[tokio::test]
async fn echo_answers_like_httpbin() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    tokio::spawn(oxmesh_demo::echo::run(port));
    assert!(get(port, "/status/418").await.starts_with("HTTP/1.1 418"));
    let headers = get(port, "/headers").await;
    assert!(headers.contains("\"x-probe\":\"yes\""), "{headers}");
    assert!(get(port, "/ip").await.contains("\"origin\":\"127.0.0.1\""));
    let echo = get(port, "/anything?x=1").await;
    assert!(echo.contains("\"path\":\"/anything?x=1\""), "{echo}");
}
