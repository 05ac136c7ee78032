//! A small Event Hubs-style AMQP client on fe2o3-amqp, for tests and probes.
#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use fe2o3_amqp::{
    Receiver, Sender,
    types::{
        messaging::{Body, Message},
        primitives::{SimpleValue, Value},
    },
};
use herald_amqp::client::HubClient;
use tokio::net::TcpStream;

use super::{KEY, KEY_NAME, MemBackend};
use herald_amqp::{AmqpListener, HubsBackend, Limits, ListenerConfig};

/// Start a plaintext listener on 127.0.0.1:0 over `backend`.
pub async fn start(
    backend: Arc<MemBackend>,
    limits: Limits,
) -> (
    SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let b: Arc<dyn HubsBackend> = backend;
    let config = ListenerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: None,
        limits,
    };
    let l = AmqpListener::bind(config, b, shutdown.clone())
        .await
        .unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(l.serve());
    (addr, shutdown, h)
}

/// The library client with panicking calls, so tests read straight.
pub struct Client(HubClient);

impl std::ops::Deref for Client {
    type Target = HubClient;
    fn deref(&self) -> &HubClient {
        &self.0
    }
}

impl std::ops::DerefMut for Client {
    fn deref_mut(&mut self) -> &mut HubClient {
        &mut self.0
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr, host: &str) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        Client(HubClient::connect(stream, host).await.unwrap())
    }

    pub async fn request(
        &mut self,
        node: &str,
        reply_to: Option<&str>,
        app: Vec<(&str, SimpleValue)>,
        body: Value,
    ) -> (i32, String, Message<Body<Value>>) {
        self.0.request(node, reply_to, app, body).await.unwrap()
    }

    pub async fn put_token(&mut self, audience: &str, token: &str) -> i32 {
        self.0.put_token(audience, token).await.unwrap()
    }

    /// put-token with the root key for `path` (e.g. `hub`).
    pub async fn authorize(&mut self, path: &str) {
        let aud = self.audience(path);
        let token = super::sas_token(&aud, KEY_NAME, KEY, Duration::from_secs(3600));
        assert_eq!(self.put_token(&aud, &token).await, 202);
    }

    pub async fn producer(&mut self, path: &str) -> Sender {
        self.0.producer(path).await.unwrap()
    }

    pub async fn consumer(
        &mut self,
        hub: &str,
        partition: &str,
        selector: Option<&str>,
        epoch: Option<i64>,
        credit: u32,
    ) -> Result<Receiver, fe2o3_amqp::link::ReceiverAttachError> {
        self.0
            .consumer(hub, "$Default", partition, selector, epoch, credit)
            .await
    }

    pub async fn close(self) {
        self.0.close().await
    }
}

#[allow(unused_imports)]
pub use herald_amqp::client::{BATCH_FORMAT, annotation, batch, inner_message, sym};
