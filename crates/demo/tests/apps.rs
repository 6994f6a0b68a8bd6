//! tcp-echo and the gRPC greeter over real sockets.

use std::time::Duration;

use oxmesh_demo::greeter::proto::HelloRequest;
use oxmesh_demo::greeter::proto::greeter_client::GreeterClient;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
async fn tcp_echo_prefixes_each_line() {
    let port = free_port();
    tokio::spawn(oxmesh_demo::tcp_echo::run(port, "hello".into()));
    let mut stream = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stream.write_all(b"world\nmesh\n").await.expect("write");
    let mut lines = BufReader::new(stream).lines();
    assert_eq!(
        lines.next_line().await.expect("read").as_deref(),
        Some("hello world")
    );
    assert_eq!(
        lines.next_line().await.expect("read").as_deref(),
        Some("hello mesh")
    );
}

#[tokio::test]
async fn greeter_answers_and_streams() {
    let port = free_port();
    tokio::spawn(oxmesh_demo::greeter::run(port));
    let mut client = loop {
        if let Ok(c) = GreeterClient::connect(format!("http://127.0.0.1:{port}")).await {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let reply = client
        .say_hello(HelloRequest {
            name: "mesh".into(),
            count: 0,
        })
        .await
        .expect("unary")
        .into_inner();
    assert!(
        reply.message.starts_with("Hello mesh from "),
        "{}",
        reply.message
    );
    let mut stream = client
        .say_hello_stream(HelloRequest {
            name: "mesh".into(),
            count: 3,
        })
        .await
        .expect("stream")
        .into_inner();
    let mut got = Vec::new();
    while let Some(reply) = stream.message().await.expect("message") {
        got.push(reply.message);
    }
    assert_eq!(got.len(), 3);
    assert!(got[2].starts_with("Hello mesh (3) from "), "{got:?}");
    let refused = client
        .say_hello_stream(HelloRequest {
            name: "x".into(),
            count: 1000,
        })
        .await
        .expect_err("too many");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}
