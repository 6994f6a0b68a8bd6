//! A gRPC greeter with a server stream (`helloworld.Greeter`), for gRPC through
//! the mesh: each reply names the pod that answered.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Generated from `proto/greeter.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("helloworld");
}

use proto::greeter_server::{Greeter, GreeterServer};
use proto::{HelloReply, HelloRequest};

/// The most messages one stream sends.
const MAX_STREAM: u32 = 100;

struct Service {
    pod: String,
}

type Replies = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl Greeter for Service {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(HelloReply {
            message: format!("Hello {} from {}", request.into_inner().name, self.pod),
        }))
    }

    type SayHelloStreamStream = Replies;

    async fn say_hello_stream(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<Replies>, Status> {
        let request = request.into_inner();
        if request.count > MAX_STREAM {
            return Err(Status::invalid_argument(format!(
                "count is at most {MAX_STREAM}"
            )));
        }
        let pod = self.pod.clone();
        let replies = (1..=request.count).map(move |i| {
            Ok(HelloReply {
                message: format!("Hello {} ({i}) from {pod}", request.name),
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(replies))))
    }
}

/// Serves the greeter in plaintext (h2c) on `port`, as apps in a mesh do.
pub async fn run(port: u16) -> Result<(), tonic::transport::Error> {
    let pod = std::env::var("HOSTNAME").unwrap_or_else(|_| "greeter".into());
    tonic::transport::Server::builder()
        .add_service(GreeterServer::new(Service { pod }))
        .serve(std::net::SocketAddr::from(([0, 0, 0, 0], port)))
        .await
}
